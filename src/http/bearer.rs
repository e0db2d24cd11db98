//! Reading a bearer token from request headers (a leaf: the HTTP handlers share it).

/// The token of an `Authorization: Bearer <jwt>` header (either case of `Bearer`).
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The caller of an HTTP dialect route: the verified identity of its bearer token, or the
/// sentence saying why not (`how` tells a caller without a token where the client library puts
/// it).
pub fn caller(
    verifier: &crate::auth::Verifier,
    headers: &axum::http::HeaderMap,
    how: &str,
) -> Result<crate::auth::Identity, String> {
    let Some(token) = bearer_token(headers) else {
        return Err(format!(
            "no token: send `Authorization: Bearer <jwt>` ({how})"
        ));
    };
    verifier.verify(token).map_err(|e| e.to_string())
}
