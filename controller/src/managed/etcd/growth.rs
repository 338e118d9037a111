//! Growing a one-member etcd to three, one step at a time (pure). The reconciler lists the
//! members through the first pod, asks [`next`] what to do, does it and asks again.
//!
//! The order: the first member gets its peer URL (the single member advertised loopback), both
//! new members are added as learners (they do not count for the quorum until promoted, so the
//! one member keeps writing), the StatefulSet runs three pods whose new members join with the
//! final membership, and each learner is promoted once it has started (etcd refuses until it
//! has caught up).

use super::grpc::Member;

/// A change of etcd's membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    SetPeerUrl { id: u64, url: String },
    AddLearner { url: String },
    Promote { id: u64, url: String },
}

impl Change {
    /// The peer URL of the member it changes.
    pub fn url(&self) -> &str {
        match self {
            Self::SetPeerUrl { url, .. } | Self::AddLearner { url } | Self::Promote { url, .. } => {
                url
            }
        }
    }
}

/// What to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Make this change, then ask again.
    Change(Change),
    /// Every new member is in the membership: run this many pods and wait for the learners
    /// named (by peer URL) to start.
    Run { pods: i32, waiting: Vec<String> },
    /// Every member votes.
    Done,
}

/// The next step towards members at `wanted` peer URLs (the first is the existing member's),
/// or why kvtenant cannot go on.
pub fn next(members: &[Member], wanted: &[String]) -> Result<Next, String> {
    let known = |m: &Member| m.peer_urls.iter().any(|u| wanted.contains(u));
    if let [only] = members
        && let Some(first) = wanted.first()
        && !known(only)
    {
        return Ok(Next::Change(Change::SetPeerUrl {
            id: only.id,
            url: first.clone(),
        }));
    }
    if members.is_empty() {
        return Err("etcd lists no members".into());
    }
    if let Some(stranger) = members.iter().find(|m| !known(m)) {
        return Err(format!(
            "etcd has a member kvtenant did not add ({} at {}): remove it (etcdctl member remove \
             {:x}) and kvtenant goes on",
            if stranger.name.is_empty() {
                "unstarted"
            } else {
                &stranger.name
            },
            stranger.peer_urls.join(","),
            stranger.id
        ));
    }
    let registered = |url: &String| members.iter().any(|m| m.peer_urls.contains(url));
    if let Some(url) = wanted.iter().find(|u| !registered(u)) {
        return Ok(Next::Change(Change::AddLearner { url: url.clone() }));
    }
    // a learner that has started has published its name
    if let Some(started) = members.iter().find(|m| m.is_learner && !m.name.is_empty()) {
        return Ok(Next::Change(Change::Promote {
            id: started.id,
            url: started.peer_urls.first().cloned().unwrap_or_default(),
        }));
    }
    let waiting: Vec<String> = members
        .iter()
        .filter(|m| m.is_learner)
        .flat_map(|m| m.peer_urls.iter().cloned())
        .collect();
    Ok(if waiting.is_empty() {
        Next::Done
    } else {
        Next::Run {
            pods: wanted.len() as i32,
            waiting,
        }
    })
}

/// How many pods the StatefulSet may run: one until every new member is in the membership
/// (a pod whose member is not there yet could not join), then all.
pub fn pods(members: &[Member], wanted: &[String]) -> i32 {
    let all = wanted
        .iter()
        .all(|u| members.iter().any(|m| m.peer_urls.contains(u)));
    if all { wanted.len() as i32 } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, name: &str, url: &str, learner: bool) -> Member {
        Member {
            id,
            name: name.into(),
            peer_urls: vec![url.into()],
            client_urls: vec![],
            is_learner: learner,
        }
    }

    fn wanted() -> Vec<String> {
        (0..3).map(|i| format!("https://m-{i}:2380")).collect()
    }

    #[test]
    fn one_member_grows_to_three_in_order() {
        let w = wanted();
        // the single member advertised loopback
        let mut ms = vec![member(1, "etcd", "http://127.0.0.1:2380", false)];
        assert_eq!(
            next(&ms, &w).unwrap(),
            Next::Change(Change::SetPeerUrl {
                id: 1,
                url: w[0].clone()
            })
        );
        ms[0].peer_urls = vec![w[0].clone()];
        assert_eq!(pods(&ms, &w), 1);
        assert_eq!(
            next(&ms, &w).unwrap(),
            Next::Change(Change::AddLearner { url: w[1].clone() })
        );
        ms.push(member(2, "", &w[1], true));
        assert_eq!(pods(&ms, &w), 1, "one new member still missing");
        assert_eq!(
            next(&ms, &w).unwrap(),
            Next::Change(Change::AddLearner { url: w[2].clone() })
        );
        ms.push(member(3, "", &w[2], true));
        assert_eq!(pods(&ms, &w), 3);
        assert_eq!(
            next(&ms, &w).unwrap(),
            Next::Run {
                pods: 3,
                waiting: vec![w[1].clone(), w[2].clone()]
            }
        );
        ms[1].name = "m-1".into();
        assert_eq!(
            next(&ms, &w).unwrap(),
            Next::Change(Change::Promote {
                id: 2,
                url: w[1].clone()
            })
        );
        ms[1].is_learner = false;
        ms[2].name = "m-2".into();
        assert_eq!(
            next(&ms, &w).unwrap(),
            Next::Change(Change::Promote {
                id: 3,
                url: w[2].clone()
            })
        );
        ms[2].is_learner = false;
        assert_eq!(next(&ms, &w).unwrap(), Next::Done);
        assert_eq!(pods(&ms, &w), 3);
    }

    #[test]
    fn a_member_kvtenant_did_not_add_stops_the_growth() {
        let w = wanted();
        let ms = vec![
            member(1, "m-0", &w[0], false),
            member(0xab, "intruder", "https://elsewhere:2380", false),
        ];
        let e = next(&ms, &w).unwrap_err();
        assert!(
            e.contains("intruder") && e.contains("member remove ab"),
            "{e}"
        );
        assert!(next(&[], &w).is_err());
    }

    #[test]
    fn a_grown_cluster_is_done() {
        let w = wanted();
        let ms: Vec<_> = (0..3)
            .map(|i| member(i + 1, &format!("m-{i}"), &w[i as usize], false))
            .collect();
        assert_eq!(next(&ms, &w).unwrap(), Next::Done);
    }
}
