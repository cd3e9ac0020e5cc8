//! tonic integration (feature `tonic`): read the [`Principal`] from a `tonic::Request`.
//!
//! tonic copies the HTTP request's extensions into `tonic::Request::extensions()`, so a service
//! behind [`ApiKeyAuth`](crate::ApiKeyAuth) reads the caller with [`PrincipalExt::principal`]
//! or [`PrincipalExt::require_principal`].

use crate::principal::Principal;

/// Access to the [`Principal`] of a `tonic::Request`.
pub trait PrincipalExt {
    /// The authenticated caller, if `ApiKeyAuth` ran.
    fn principal(&self) -> Option<&Principal>;

    /// The authenticated caller, or `Status::internal` naming the missing layer (fail closed).
    #[allow(clippy::result_large_err)]
    fn require_principal(&self) -> Result<&Principal, tonic::Status> {
        self.principal().ok_or_else(|| {
            tracing::error!("no Principal in the gRPC request: ApiKeyAuth layer missing");
            tonic::Status::internal("server misconfiguration: authentication layer missing")
        })
    }
}

impl<T> PrincipalExt for tonic::Request<T> {
    fn principal(&self) -> Option<&Principal> {
        self.extensions().get::<Principal>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::KeyRecord;
    use crate::{KeyHash, Plan, Scopes, Timestamp};
    use std::sync::Arc;

    #[test]
    fn principal_from_tonic_request() {
        let mut req = tonic::Request::new(());
        assert_eq!(
            req.require_principal().unwrap_err().code(),
            tonic::Code::Internal
        );
        let record = KeyRecord::new(
            "key_1".into(),
            "org_1".into(),
            "n".into(),
            KeyHash::of("x"),
            "h".into(),
            Scopes::full_access(),
            Arc::from("live"),
            Timestamp::EPOCH,
        );
        req.extensions_mut()
            .insert(Principal::new(Arc::new(record), Plan::Free));
        assert_eq!(req.principal().unwrap().org_id().as_str(), "org_1");
    }
}
