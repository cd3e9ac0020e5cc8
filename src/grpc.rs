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
