//! Authorization: a SubjectAccessReview in the tenant, for the user the tenant apiserver named,
//! built as virt-api's authorizer builds it (verb from the HTTP method, group
//! `subresources.kubevirt.io`, resource `virtualmachines`/`virtualmachineinstances`, subresource
//! the first segment after the name, namespace and name as the tenant sees them).
//!
//! The tenant apiserver has already authorized the same attributes before proxying; the review
//! here is the same defense in depth virt-api has, and what makes a call that reaches the proxy
//! by another way (a leaked front-proxy certificate) no stronger than the user it names.

use http::Method;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, PostParams};

use super::GROUP;
use super::auth::UserInfo;
use super::route::Call;

/// The RBAC verb of a request (as the apiserver maps methods; `None`: not a method KubeVirt
/// routes).
pub fn verb(method: &Method, has_name: bool) -> Option<&'static str> {
    Some(match *method {
        Method::GET | Method::HEAD if has_name => "get",
        Method::GET | Method::HEAD => "list",
        Method::PUT => "update",
        Method::POST => "create",
        Method::PATCH => "patch",
        Method::DELETE if has_name => "delete",
        Method::DELETE => "deletecollection",
        _ => return None,
    })
}

/// The review for a call.
pub fn review(user: &UserInfo, call: &Call, verb: &str) -> SubjectAccessReview {
    let sub = call.subresource();
    review_as(
        user,
        ResourceAttributes {
            group: Some(GROUP.into()),
            version: Some(call.version.clone()),
            resource: Some(call.resource.clone()),
            subresource: (!sub.is_empty()).then(|| sub.to_string()),
            namespace: Some(call.namespace.clone()),
            name: call.name.clone(),
            verb: Some(verb.into()),
            ..ResourceAttributes::default()
        },
    )
}

/// A review of `attributes` for `user`, as the tenant apiserver named the user (pure).
pub fn review_as(user: &UserInfo, attributes: ResourceAttributes) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.name.clone()),
            uid: user.uid.clone(),
            groups: (!user.groups.is_empty()).then(|| user.groups.clone()),
            extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
            resource_attributes: Some(attributes),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    }
}

/// `Ok(None)`: allowed; `Ok(Some(reason))`: denied (reason may be empty).
pub async fn authorize(
    tenant: &Client,
    user: &UserInfo,
    call: &Call,
    verb: &str,
) -> Result<Option<String>, kube::Error> {
    ask(tenant, &review(user, call, verb)).await
}

/// Asks the tenant apiserver `review`: `Ok(None)`: allowed; `Ok(Some(reason))`: denied (reason
/// may be empty).
pub async fn ask(
    tenant: &Client,
    review: &SubjectAccessReview,
) -> Result<Option<String>, kube::Error> {
    let api: Api<SubjectAccessReview> = Api::all(tenant.clone());
    let result = api.create(&PostParams::default(), review).await?;
    let status = result.status.unwrap_or_default();
    if status.allowed {
        Ok(None)
    } else {
        Ok(Some(status.reason.unwrap_or_default()))
    }
}

/// The apiserver's wording of a denial, naming the tenant object.
pub fn forbidden_message(user: &UserInfo, call: &Call, verb: &str, reason: &str) -> String {
    let object = match &call.name {
        Some(name) => format!("{}.{GROUP} {name:?}", call.resource),
        None => format!("{}.{GROUP}", call.resource),
    };
    let mut m = format!(
        "{object} is forbidden: User {:?} cannot {verb} resource {:?} in API group {GROUP:?} in the namespace {:?}",
        user.name,
        call.rbac_resource(),
        call.namespace
    );
    if !reason.is_empty() {
        m.push_str(": ");
        m.push_str(reason);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::route::{Route, parse};

    fn call(path: &str) -> Call {
        match parse(path) {
            Route::Call(c) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reviews_as_virt_api_does() {
        let user = UserInfo {
            name: "alice".into(),
            groups: vec!["dev".into()],
            ..UserInfo::default()
        };
        let c = call(
            "/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachineinstances/vm1/console",
        );
        let v = verb(&Method::GET, c.name.is_some()).unwrap();
        assert_eq!(v, "get");
        let r = review(&user, &c, v);
        let a = r.spec.resource_attributes.unwrap();
        assert_eq!(a.group.as_deref(), Some("subresources.kubevirt.io"));
        assert_eq!(a.resource.as_deref(), Some("virtualmachineinstances"));
        assert_eq!(a.subresource.as_deref(), Some("console"));
        assert_eq!(a.namespace.as_deref(), Some("default"));
        assert_eq!(a.name.as_deref(), Some("vm1"));
        assert_eq!(r.spec.user.as_deref(), Some("alice"));
        assert!(r.spec.extra.is_none());

        let c =
            call("/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachines/vm1/start");
        assert_eq!(verb(&Method::PUT, true), Some("update"));
        let m = forbidden_message(&user, &c, "update", "");
        assert_eq!(
            m,
            r#"virtualmachines.subresources.kubevirt.io "vm1" is forbidden: User "alice" cannot update resource "virtualmachines/start" in API group "subresources.kubevirt.io" in the namespace "default""#
        );
        assert_eq!(verb(&Method::OPTIONS, true), None);
    }
}
