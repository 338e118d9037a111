//! Telling the tenant why an object is not synced: a Warning Event `SyncRefused`, and a
//! `Synced=False` condition where the kind has conditions. Once per distinct message.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::DynamicObject;
use kube::runtime::events::{Event, EventType};
use kvtenant_api::labels::{REASON_REFUSED_BY_POLICY, REASON_SYNC_REFUSED, SYNCED_CONDITION};
use kvtenant_rules::Violation;
use kvtenant_rules::kinds::Kind;
use serde_json::{Value, json};

use super::Tenant;
use crate::error::{Cluster, Error, describe};
use crate::host::Key;

/// The message a tenant sees for a refusal.
pub fn refusal_message(violations: &[Violation]) -> String {
    format!(
        "not synced to the host: {}",
        violations
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    )
}

/// The tenant object's status with `Synced=False` (other conditions kept).
pub fn with_refused_condition(status: Option<&Value>, message: &str, now: &str) -> Value {
    let condition = json!({
        "type": SYNCED_CONDITION,
        "status": "False",
        "reason": REASON_REFUSED_BY_POLICY,
        "message": message,
        "lastTransitionTime": now,
        "lastProbeTime": null,
    });
    let mut status = status.cloned().unwrap_or_else(|| json!({}));
    let conditions: Vec<Value> = status
        .get("conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| c.get("type").and_then(Value::as_str) != Some(SYNCED_CONDITION))
        .cloned()
        .chain(std::iter::once(condition))
        .collect();
    status["conditions"] = Value::Array(conditions);
    status
}

impl Tenant {
    pub(super) fn clear_refusal(&self, key: &Key) {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    pub(super) async fn refuse(
        &self,
        kind: &Kind,
        key: &Key,
        t: &DynamicObject,
        violations: &[Violation],
    ) -> Result<(), Error> {
        let message = refusal_message(violations);
        {
            let mut r = self.refused.lock().unwrap_or_else(|e| e.into_inner());
            if r.get(key) == Some(&message) {
                return Ok(());
            }
            r.insert(key.clone(), message.clone());
        }
        tracing::info!(tenant = %self.label, kind = %kind.name(), ns = %key.namespace, name = %key.name, %message, "refused");
        self.synced(kind, "refused");
        let reference = ObjectReference {
            api_version: Some(kind.resource.api_version.clone()),
            kind: Some(kind.name().to_string()),
            name: t.metadata.name.clone(),
            namespace: t.metadata.namespace.clone(),
            uid: t.metadata.uid.clone(),
            resource_version: t.metadata.resource_version.clone(),
            field_path: None,
        };
        let note: String = message.chars().take(1000).collect();
        self.api_call(Cluster::Tenant, "create");
        let published = self
            .recorder
            .publish(
                &Event {
                    type_: EventType::Warning,
                    reason: REASON_SYNC_REFUSED.into(),
                    note: Some(note),
                    action: "Sync".into(),
                    secondary: None,
                },
                &reference,
            )
            .await
            .map_err(Error::api(
                "create",
                Cluster::Tenant,
                format!(
                    "Event for {}",
                    describe(kind.name(), &key.namespace, &key.name)
                ),
            ));
        if let Err(e) = published {
            // told again at the next attempt
            self.clear_refusal(key);
            return Err(e);
        }
        if kind.reports_conditions() {
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            let status = with_refused_condition(t.data.get("status"), &message, &now);
            if let Err(e) = self.write_tenant_status(kind, key, t.clone(), status).await {
                self.clear_refusal(key);
                return Err(e);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_condition_replaces_an_earlier_one_and_keeps_the_others() {
        let status = json!({"conditions": [
            {"type": "Ready", "status": "True"},
            {"type": "Synced", "status": "False", "message": "old"}
        ], "printableStatus": "Stopped"});
        let v = [Violation::new("spec.x", "fix it")];
        let m = refusal_message(&v);
        assert_eq!(m, "not synced to the host: spec.x: fix it");
        let out = with_refused_condition(Some(&status), &m, "2026-12-04T00:00:00Z");
        let conds = out["conditions"].as_array().cloned().unwrap_or_default();
        assert_eq!(conds.len(), 2);
        assert_eq!(conds[0]["type"], "Ready");
        assert_eq!(conds[1]["message"], m);
        assert_eq!(conds[1]["reason"], REASON_REFUSED_BY_POLICY);
        assert_eq!(out["printableStatus"], "Stopped");
        assert_eq!(
            with_refused_condition(None, &m, "t")["conditions"][0]["type"],
            SYNCED_CONDITION
        );
    }
}
