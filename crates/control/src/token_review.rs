//! Kubernetes-mode authentication: the pod's projected service-account token, checked by the API
//! server's TokenReview, as istiod does.
//!
//! [`KubeTokens`] is the [`TokenAuthenticator`]: it asks a [`TokenReviewer`] about the token with
//! the audiences the CA accepts (Istio's `istio-ca`), and maps the authenticated user
//! `system:serviceaccount:<ns>:<sa>` to a [`Caller`] (with the pod name from the token's
//! `authentication.kubernetes.io/pod-name` extra when the API server reports it). Anything else
//! (unauthenticated, another kind of user, no audience in common) is rejected.
//!
//! [`TokenReviewer`] is the seam: [`KubeReviewer`] creates the TokenReview
//! (`POST /apis/authentication.k8s.io/v1/tokenreviews`) with the control plane's kube-rs client,
//! the one its Kubernetes registry watches with; unit tests give a canned reviewer.
//!
//! I/O: one API request per review (no cache yet: istiod caches reviews briefly; add one here if
//! the API server's load shows it). The reviewed token is never logged.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::Api;
use kube::api::PostParams;

use crate::tokens::{AuthError, BearerToken, BoxFuture, Caller, TokenAuthenticator};

/// The audience Istio's agents request for the token they send to the CA.
pub const ISTIO_CA_AUDIENCE: &str = "istio-ca";
/// The TokenReview endpoint.
pub const TOKEN_REVIEW_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
/// How long one review may take.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);
/// The user-name prefix of service accounts.
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";
/// The TokenReview `user.extra` key holding the pod a bound token was issued for.
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

/// What a TokenReview said about a token (`status` of `authentication.k8s.io/v1` TokenReview).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenReviewStatus {
    /// Whether the token is valid.
    pub authenticated: bool,
    /// `user.username`, e.g. `system:serviceaccount:default:httpbin`.
    pub username: String,
    /// `user.extra["authentication.kubernetes.io/pod-name"]`, for bound tokens.
    pub pod_name: Option<String>,
    /// The audiences the token is valid for, among those asked.
    pub audiences: Vec<String>,
    /// `error`, when the API server gave one.
    pub error: Option<String>,
}

/// Asks someone (the API server) whether a token is valid for `audiences`.
pub trait TokenReviewer: Send + Sync + fmt::Debug {
    /// Reviews `token`. `Err` only when no answer could be had ([`AuthError::Unavailable`]); an
    /// invalid token is an `Ok` status with `authenticated: false`.
    fn review<'a>(
        &'a self,
        token: &'a BearerToken,
        audiences: &'a [String],
    ) -> BoxFuture<'a, Result<TokenReviewStatus, AuthError>>;
}

/// Kubernetes-mode [`TokenAuthenticator`]: TokenReview, then `system:serviceaccount:<ns>:<sa>`.
#[derive(Debug)]
pub struct KubeTokens {
    reviewer: Arc<dyn TokenReviewer>,
    audiences: Vec<String>,
}

impl KubeTokens {
    /// Authenticates with `reviewer`, accepting tokens for `audiences` (Istio:
    /// [`ISTIO_CA_AUDIENCE`]).
    pub fn new(reviewer: Arc<dyn TokenReviewer>, audiences: Vec<String>) -> KubeTokens {
        KubeTokens {
            reviewer,
            audiences,
        }
    }

    /// Maps a review to the caller, or says why not.
    pub fn caller(&self, status: &TokenReviewStatus) -> Result<Caller, AuthError> {
        if !status.authenticated {
            let reason = status.error.as_deref().unwrap_or("not authenticated");
            return Err(AuthError::Rejected(format!("TokenReview: {reason}")));
        }
        if !self.audiences.is_empty()
            && !status.audiences.is_empty()
            && !status.audiences.iter().any(|a| self.audiences.contains(a))
        {
            return Err(AuthError::Rejected(format!(
                "TokenReview: the token is for {:?}, not {:?}",
                status.audiences, self.audiences
            )));
        }
        let parts = status
            .username
            .strip_prefix(SERVICE_ACCOUNT_PREFIX)
            .and_then(|rest| rest.split_once(':'))
            .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'));
        let Some((namespace, service_account)) = parts else {
            return Err(AuthError::Rejected(format!(
                "TokenReview: {:?} is not a service account",
                status.username
            )));
        };
        Ok(Caller {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
            pod: status.pod_name.clone(),
        })
    }
}

impl TokenAuthenticator for KubeTokens {
    fn authenticate<'a>(
        &'a self,
        token: &'a BearerToken,
    ) -> BoxFuture<'a, Result<Caller, AuthError>> {
        Box::pin(async move {
            let status = self.reviewer.review(token, &self.audiences).await?;
            self.caller(&status)
        })
    }
}

/// Reviews tokens with the API server's TokenReview, over the control plane's kube-rs client
/// (in-cluster service account or `KUBECONFIG`; RBAC: `create` on `tokenreviews`).
#[derive(Clone)]
pub struct KubeReviewer {
    client: kube::Client,
}

impl KubeReviewer {
    /// A reviewer over `client`.
    pub fn new(client: kube::Client) -> KubeReviewer {
        KubeReviewer { client }
    }
}

impl fmt::Debug for KubeReviewer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeReviewer").finish_non_exhaustive()
    }
}

impl TokenReviewer for KubeReviewer {
    fn review<'a>(
        &'a self,
        token: &'a BearerToken,
        audiences: &'a [String],
    ) -> BoxFuture<'a, Result<TokenReviewStatus, AuthError>> {
        Box::pin(async move {
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.expose().to_string()),
                    audiences: Some(audiences.to_vec()),
                },
                ..Default::default()
            };
            let api: Api<TokenReview> = Api::all(self.client.clone());
            let answer =
                tokio::time::timeout(REVIEW_TIMEOUT, api.create(&PostParams::default(), &review))
                    .await
                    .map_err(|_| AuthError::Unavailable("TokenReview timed out".to_string()))?
                    .map_err(|error| {
                        AuthError::Unavailable(match error {
                            kube::Error::Api(status) => format!(
                                "TokenReview: API server answered {}: {}",
                                status.code, status.message
                            ),
                            other => format!("TokenReview: {other}"),
                        })
                    })?;
            Ok(answer
                .status
                .map(|s| TokenReviewStatus::from(&s))
                .unwrap_or_default())
        })
    }
}

impl From<&k8s_openapi::api::authentication::v1::TokenReviewStatus> for TokenReviewStatus {
    fn from(status: &k8s_openapi::api::authentication::v1::TokenReviewStatus) -> Self {
        let user = status.user.as_ref();
        TokenReviewStatus {
            authenticated: status.authenticated.unwrap_or(false),
            username: user.and_then(|u| u.username.clone()).unwrap_or_default(),
            pod_name: user
                .and_then(|u| u.extra.as_ref())
                .and_then(|extra| extra.get(POD_NAME_EXTRA))
                .and_then(|values| values.first().cloned()),
            audiences: status.audiences.clone().unwrap_or_default(),
            error: status.error.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kube() -> KubeTokens {
        #[derive(Debug)]
        struct Never;
        impl TokenReviewer for Never {
            fn review<'a>(
                &'a self,
                _: &'a BearerToken,
                _: &'a [String],
            ) -> BoxFuture<'a, Result<TokenReviewStatus, AuthError>> {
                Box::pin(async { Err(AuthError::Unavailable("never".into())) })
            }
        }
        KubeTokens::new(Arc::new(Never), vec![ISTIO_CA_AUDIENCE.to_string()])
    }

    fn status(username: &str) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: true,
            username: username.to_string(),
            audiences: vec![ISTIO_CA_AUDIENCE.to_string()],
            ..Default::default()
        }
    }

    #[test]
    fn service_accounts_only() {
        let k = kube();
        let caller = k
            .caller(&status("system:serviceaccount:default:httpbin"))
            .unwrap();
        assert_eq!(
            (caller.namespace.as_str(), caller.service_account.as_str()),
            ("default", "httpbin")
        );
        for bad in [
            "alice",
            "system:serviceaccount:default",
            "system:serviceaccount::sa",
            "system:serviceaccount:ns:",
            "system:serviceaccount:ns:sa:extra",
            "system:node:kind-worker",
        ] {
            assert!(
                matches!(k.caller(&status(bad)), Err(AuthError::Rejected(_))),
                "{bad}"
            );
        }
        let mut unauthenticated = status("system:serviceaccount:default:httpbin");
        unauthenticated.authenticated = false;
        unauthenticated.error = Some("token has expired".into());
        let err = k.caller(&unauthenticated).unwrap_err();
        assert!(err.to_string().contains("token has expired"));
        let mut other_audience = status("system:serviceaccount:default:httpbin");
        other_audience.audiences = vec!["vault".into()];
        assert!(k.caller(&other_audience).is_err());
    }
}
