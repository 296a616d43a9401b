//! The HTTP API's errors, mapped to a status and a JSON body `{"error": "..."}` in one place.
//! Every message says what went wrong and what to do.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use tally_store::StoreError;

use crate::hub::HubError;

/// An API error.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No or bad credentials (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated but not allowed (403).
    #[error("{0}")]
    Forbidden(String),
    /// Unknown thing (404).
    #[error("{0}")]
    NotFound(String),
    /// Bad request (400).
    #[error("{0}")]
    BadRequest(String),
    /// Conflict with the current state (409).
    #[error("{0}")]
    Conflict(String),
    /// Gone (410): used, expired.
    #[error("{0}")]
    Gone(String),
    /// The request body is too large (413).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// Too many attempts or connections from one address (429).
    #[error("{0}")]
    TooManyRequests(String),
    /// The server cannot take more (503).
    #[error("{0}")]
    Unavailable(String),
    /// Storage failed, or refused what was asked: the status depends on what it says (an
    /// unknown or used invite 410, a full disk 503, ...: [`ApiError::status`]).
    #[error(transparent)]
    Store(Box<StoreError>),
    /// The document hub refused a change (400), has no such document (404), or failed (500).
    #[error("{}", hub_words(.0))]
    Hub(#[source] Box<HubError>),
    /// The request's work on the blocking pool did not finish: it panicked, or the server is
    /// stopping (500).
    #[error("the request's work stopped before it answered: {0}")]
    Stopped(#[from] tokio::task::JoinError),
    /// Something the server stored does not read back (a damaged database, or a bug) (500).
    #[error("{what}: {source}")]
    Stored {
        /// What does not read.
        what: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Another internal failure, said in words (500).
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// Something stored that does not read back: `what`, and the error that says why.
    pub fn stored(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> ApiError {
        ApiError::Stored {
            what: what.into(),
            source: source.into(),
        }
    }

    /// The HTTP status of this error: the one place errors become statuses.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Store(e) => store_status(e),
            ApiError::Hub(e) => match &**e {
                HubError::Store(e) => store_status(e),
                HubError::Rejected(_) => StatusCode::BAD_REQUEST,
                HubError::Unavailable => StatusCode::NOT_FOUND,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::Stopped(_) | ApiError::Stored { .. } | ApiError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

/// The status of a storage error.
fn store_status(e: &StoreError) -> StatusCode {
    use tally_store::StoreError as E;
    match e {
        E::InviteUnknown | E::InviteExpired | E::InviteUsed => StatusCode::GONE,
        E::NotFound(_) => StatusCode::NOT_FOUND,
        E::ReplaceRefused(tally_store::ReplaceRefusal::UnknownDevice(_)) => StatusCode::BAD_REQUEST,
        E::ReplaceRefused(_) => StatusCode::FORBIDDEN,
        E::Full(_) | E::ReadOnly(_) | E::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// What the API says of a hub error.
fn hub_words(e: &HubError) -> String {
    match e {
        HubError::Rejected(r) => format!("refused: {r}"),
        HubError::Unavailable => "no such document".into(),
        HubError::Store(s) => s.to_string(),
        other => other.to_string(),
    }
}

impl From<HubError> for ApiError {
    fn from(e: HubError) -> Self {
        match e {
            HubError::Store(s) => ApiError::Store(Box::new(s)),
            other => ApiError::Hub(Box::new(other)),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Store(Box::new(e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            // The whole chain for the operator; the body says the error itself.
            let mut chain = self.to_string();
            let mut source = std::error::Error::source(&self);
            while let Some(e) = source {
                let words = e.to_string();
                if !chain.contains(&words) {
                    chain = format!("{chain}: {words}");
                }
                source = e.source();
            }
            tracing::error!(error = %chain, "request failed");
        }
        (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Refusal;
    use tally_core::validate::{Rejection, Rule};

    /// The error's chain, each error's own words.
    fn chain(e: &dyn std::error::Error) -> Vec<String> {
        let mut out = vec![e.to_string()];
        let mut source = e.source();
        while let Some(s) = source {
            out.push(s.to_string());
            source = s.source();
        }
        out
    }

    #[test]
    fn typed_errors_keep_their_source_and_map_to_a_status_in_one_place() {
        // A refusal by validation: 400, the words the API always said, and the typed
        // rejection still there at the end of the chain.
        let rejection = Rejection::new("signatures/s1/name", Rule::UnknownField, "drop it");
        let e = ApiError::from(HubError::Rejected(Refusal::by_rule(&rejection)));
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.to_string(), format!("refused: {rejection}"));
        let mut source = std::error::Error::source(&e);
        let mut found = None;
        while let Some(s) = source {
            if let Some(r) = s.downcast_ref::<Rejection>() {
                found = Some(r.clone());
            }
            source = s.source();
        }
        assert_eq!(found, Some(rejection));

        let e = ApiError::from(HubError::Unavailable);
        assert_eq!(
            (e.status(), e.to_string()),
            (StatusCode::NOT_FOUND, "no such document".into())
        );

        // Storage errors keep their words and their status, directly or through the hub.
        for (store, status) in [
            (StoreError::InviteUsed, StatusCode::GONE),
            (StoreError::InviteUnknown, StatusCode::GONE),
            (
                StoreError::NotFound("device d1".into()),
                StatusCode::NOT_FOUND,
            ),
            (
                StoreError::Corrupt("x".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
        ] {
            let words = store.to_string();
            let through_hub = ApiError::from(HubError::Store(match &store {
                StoreError::InviteUsed => StoreError::InviteUsed,
                StoreError::InviteUnknown => StoreError::InviteUnknown,
                StoreError::NotFound(s) => StoreError::NotFound(s.clone()),
                _ => StoreError::Corrupt("x".into()),
            }));
            let direct = ApiError::from(store);
            for e in [direct, through_hub] {
                assert_eq!((e.status(), e.to_string()), (status, words.clone()));
                assert!(matches!(e, ApiError::Store(_)), "{e:?}");
            }
        }

        // A stored document that does not read: the words say which, the source says why.
        let e = ApiError::stored(
            "the review of campaign c1",
            Rejection::new("strikes", Rule::WrongType, "expected a map"),
        );
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let c = chain(&e);
        assert_eq!(c.len(), 2, "{c:?}");
        assert!(
            c[0].starts_with("the review of campaign c1: strikes"),
            "{c:?}"
        );

        // automerge's own error stays the hub error's source.
        let bad = automerge::Automerge::load(b"not a document").unwrap_err();
        let e = ApiError::from(HubError::Automerge {
            what: "the stored snapshot of d1 does not load".into(),
            source: Box::new(bad),
        });
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let c = chain(&e);
        assert!(c.len() >= 3, "{c:?}");
        assert!(
            c[0].starts_with("the stored snapshot of d1 does not load: "),
            "{c:?}"
        );
    }

    #[tokio::test]
    async fn a_panicked_request_is_a_500_that_says_so() {
        let join = tokio::task::spawn_blocking(|| panic!("boom"))
            .await
            .unwrap_err();
        let e = ApiError::from(join);
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            e.to_string()
                .starts_with("the request's work stopped before it answered: "),
            "{e}"
        );
        assert!(std::error::Error::source(&e).is_some());
    }
}
