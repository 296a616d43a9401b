//! One-time sign-in links for the web dashboard (`tally dashboard` prints one). The command
//! line makes a throwaway age identity, seals its own token to it, and leaves the sealed token
//! here (`POST /api/v1/signin-links`, with that token); the link it prints is
//! `SERVER/#signin=ID.SECRET`, the secret in the URL's fragment, which a browser never sends.
//! The page takes the sealed token once (`POST /api/v1/signin-links/{id}/redeem`: it is then
//! gone; a 404 after), opens it with the secret, and keeps the token in the tab's session storage. So the
//! server only ever holds a token sealed to a key it never sees, for at most [`TTL_MS`], and the
//! link works once: copied from a terminal's scrollback afterwards it opens nothing.
//!
//! The links live in memory only ([`Links`]): a restart forgets them (run `tally dashboard`
//! again), and at most [`MAX_LINKS`] wait at once (past it the one closest to expiring goes).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use tally_core::Role;

use super::auth::Auth;
use super::body;
use super::types::{NewSigninLink, SealedToken, SigninLink};
use crate::AppState;
use crate::error::ApiError;
use crate::hub::now_ms;

/// How long a link works: ten minutes.
pub const TTL_MS: i64 = 10 * 60 * 1000;
/// Links waiting to be used, at most.
pub const MAX_LINKS: usize = 256;
/// The largest sealed token taken (an age file of a token is about 250 bytes; hex doubles it).
pub const MAX_SEALED: usize = 4096;

/// The links waiting to be used: id -> (sealed token, expiry).
#[derive(Default)]
pub struct Links(Mutex<HashMap<String, (String, i64)>>);

impl Links {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, i64)>> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_ms();
        m.retain(|_, (_, expires)| *expires > now);
        m
    }
}

/// `POST /api/v1/signin-links`: leaves a sealed token for one sign-in (an organizer or the
/// admin, for their own token).
pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    Auth(device): Auth,
    req: Result<Json<NewSigninLink>, JsonRejection>,
) -> Result<Json<SigninLink>, ApiError> {
    if device.role == Role::Canvasser {
        return Err(ApiError::Forbidden(
            "a canvasser's token does not sign in to the dashboard: use an organizer's or the admin's".into(),
        ));
    }
    let req = body(req, r#"{"sealed": "HEX OF AN AGE FILE"}"#)?;
    if req.sealed.is_empty()
        || req.sealed.len() > MAX_SEALED
        || !req.sealed.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(ApiError::BadRequest(format!(
            "sealed: give the sealed token as hex, at most {MAX_SEALED} digits (`tally dashboard` makes it)"
        )));
    }
    let mut links = state.signin_links.lock();
    while links.len() >= MAX_LINKS {
        let Some(oldest) = links
            .iter()
            .min_by_key(|(_, (_, expires))| *expires)
            .map(|(id, _)| id.clone())
        else {
            break;
        };
        links.remove(&oldest);
    }
    let id = hex::encode(rand::random::<[u8; 16]>());
    let expires_at = now_ms() + TTL_MS;
    links.insert(id.clone(), (req.sealed, expires_at));
    tracing::info!(device = %device.device_id, "dashboard sign-in link made");
    Ok(Json(SigninLink { id, expires_at }))
}

/// `POST /api/v1/signin-links/{id}/redeem`: the sealed token, once (no token needed: the link is
/// the proof, and what it gives is sealed to the secret in the link).
pub(crate) async fn redeem(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<SealedToken>, ApiError> {
    let taken = state.signin_links.lock().remove(&id);
    match taken {
        Some((sealed, _)) => Ok(Json(SealedToken { sealed })),
        None => Err(ApiError::NotFound(
            "no such sign-in link: it was used already, has expired (links work once, for 10 minutes) or the server restarted since; run `tally dashboard` again, or paste a token".into(),
        )),
    }
}
