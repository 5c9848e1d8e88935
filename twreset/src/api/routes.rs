//! Endpoints: `GET /v1/tw`, `POST /v1/kill`, `GET /v1/events`, `GET /v1/netns`, `GET /v1/relief`,
//! `POST /v1/relief/pause|resume`, `GET /healthz`, `GET /readyz`.
//! Errors are JSON `{"error": "..."}` with 400 (bad request), 403 (read-only caller), 404, 405,
//! 408 (body too slow), 413 (body too large), 500 (audit log) or 503 (owner not answering).

use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::{
    api::{
        Owner, OwnerGone, ReliefAction, TwQuery,
        events::{self, ChunkWriter},
        kill_req::{KillPlan, KillRequest},
        peer::Access,
        query::TwParams,
        scope,
        server::Conn,
    },
    kill::{
        audit::{Actor, AuditLog},
        exec,
        execute::{self as run, execute},
    },
    output::{NsNames, tw as render},
    table::{By, ViewConfig},
};

pub type Body = UnsyncBoxBody<Bytes, Infallible>;

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_str(content_type).expect("ascii"));
    r
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    respond(status, "application/json", format!("{v}\n"))
}

pub fn error(status: StatusCode, message: impl std::fmt::Display) -> Response<Body> {
    json_response(status, &json!({ "error": message.to_string() }))
}

fn stream(content_type: &str, body: events::ChannelBody) -> Response<Body> {
    let mut r = Response::new(body.boxed_unsync());
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_str(content_type).expect("ascii"));
    r
}

/// Wait for the owner at most `limit`.
async fn ask<T>(limit: Duration, f: impl Future<Output = Result<T, OwnerGone>>) -> Result<T, Response<Body>> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(error(StatusCode::SERVICE_UNAVAILABLE, e)),
        Err(_) => Err(error(StatusCode::SERVICE_UNAVAILABLE, format!("the agent did not answer within {limit:?}"))),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Response<Body>> {
    tokio::task::spawn_blocking(f).await.map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e))
}

pub async fn handle<O: Owner>(req: Request<Incoming>, conn: Arc<Conn<O>>) -> Result<Response<Body>, Infallible> {
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    let r = match (req.uri().path(), get, req.method() == Method::POST) {
        ("/healthz", true, _) => health(&conn, false).await,
        ("/readyz", true, _) => health(&conn, true).await,
        ("/v1/tw", true, _) => tw(&conn, req.uri().query()).await,
        ("/v1/events", true, _) => events(&conn).await,
        ("/v1/netns", true, _) => netns_names().await,
        ("/v1/kill", _, true) if conn.access == Access::ReadOnly => Err(error(
            StatusCode::FORBIDDEN,
            "read-only access: this caller's group may only GET (kills need root or the agent's socket_group)",
        )),
        ("/v1/kill", _, true) => kill(&conn, req).await,
        ("/v1/relief", true, _) => relief(&conn, ReliefAction::Status).await,
        ("/v1/relief/pause" | "/v1/relief/resume", _, true) if conn.access == Access::ReadOnly => Err(error(
            StatusCode::FORBIDDEN,
            "read-only access: this caller's group may only GET (pausing the relief needs root or the agent's socket_group)",
        )),
        ("/v1/relief/pause", _, true) => relief(&conn, ReliefAction::Pause).await,
        ("/v1/relief/resume", _, true) => relief(&conn, ReliefAction::Resume).await,
        ("/healthz" | "/readyz" | "/v1/tw" | "/v1/events" | "/v1/netns" | "/v1/relief", false, _) => {
            Err(not_allowed("GET"))
        }
        ("/v1/kill" | "/v1/relief/pause" | "/v1/relief/resume", _, false) => Err(not_allowed("POST")),
        (path, _, _) => Err(error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}"))),
    };
    Ok(r.unwrap_or_else(|e| e))
}

fn not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = error(StatusCode::METHOD_NOT_ALLOWED, format!("method not allowed (use {allow})"));
    r.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static(allow));
    r
}

async fn health<O: Owner>(conn: &Conn<O>, ready: bool) -> Result<Response<Body>, Response<Body>> {
    let h = ask(Duration::from_secs(2).min(conn.shared.limits.owner_timeout), conn.shared.owner.health()).await?;
    if !ready {
        return Ok(json_response(StatusCode::OK, &json!({"status": "ok"})));
    }
    let ok = h.seeded && h.attached;
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    Ok(json_response(status, &json!({"ready": ok, "seeded": h.seeded, "attached": h.attached})))
}

async fn tw<O: Owner>(conn: &Conn<O>, query: Option<&str>) -> Result<Response<Body>, Response<Body>> {
    let p = TwParams::parse(query).map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
    let (scope, pid) = (p.scope.clone(), conn.peer.pid);
    let netns = blocking(move || scope::tw_cookies(&scope, pid))
        .await?
        .map_err(|e| error(StatusCode::BAD_REQUEST, exec::chain(&e)))?;
    let view = ViewConfig { prefix_v4: p.prefix_v4, prefix_v6: p.prefix_v6, ..ViewConfig::default() };
    let q = TwQuery { by: p.by, sort: p.sort, view, netns };
    let snap = ask(conn.shared.limits.owner_timeout, conn.shared.owner.tw(q)).await?;
    // Identities label destination rows only; resolving them reads /proc and cgroups.
    let names = if p.by == By::Dest { blocking(NsNames::resolve).await? } else { NsNames::default() };
    if !p.text {
        return Ok(respond(StatusCode::OK, "application/json", format!("{}\n", render::render_json(&snap, &names))));
    }
    Ok(respond(StatusCode::OK, "text/plain; charset=utf-8", render::render_human(&snap, &names)))
}

/// The relief's status after `action` (`GET /v1/relief`, `POST /v1/relief/pause|resume`).
async fn relief<O: Owner>(conn: &Conn<O>, action: ReliefAction) -> Result<Response<Body>, Response<Body>> {
    let status = ask(conn.shared.limits.owner_timeout, conn.shared.owner.relief(action)).await?;
    Ok(json_response(StatusCode::OK, &status))
}

/// `ip netns` names by cookie (what labels destinations), for a client that cannot enter them.
async fn netns_names() -> Result<Response<Body>, Response<Body>> {
    let names = blocking(NsNames::resolve).await?;
    let o: serde_json::Map<String, Value> = names.0.into_iter().map(|(c, n)| (c.to_string(), Value::from(n))).collect();
    Ok(json_response(StatusCode::OK, &Value::Object(o)))
}

async fn events<O: Owner>(conn: &Conn<O>) -> Result<Response<Body>, Response<Body>> {
    let rx = ask(conn.shared.limits.owner_timeout, conn.shared.owner.subscribe()).await?;
    // The identity fields `trace --timewait --json` splices in, as the namespaces are now.
    let names = blocking(NsNames::resolve).await?;
    let identities = names.1.iter().map(|(c, i)| (*c, i.json_fragment())).collect();
    Ok(stream("application/x-ndjson", events::stream(rx, identities)))
}

/// The request body, bounded in size and time.
async fn read_body(limits: &crate::api::Limits, body: Incoming) -> Result<Bytes, Response<Body>> {
    match tokio::time::timeout(limits.body_timeout, Limited::new(body, limits.max_body).collect()).await {
        Err(_) => Err(error(StatusCode::REQUEST_TIMEOUT, "the request body did not arrive in time")),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(error(StatusCode::PAYLOAD_TOO_LARGE, format!("request body over {} bytes", limits.max_body)))
        }
        Ok(Err(e)) => Err(error(StatusCode::BAD_REQUEST, format!("reading the request body: {e}"))),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

async fn kill<O: Owner>(conn: &Conn<O>, req: Request<Incoming>) -> Result<Response<Body>, Response<Body>> {
    let shared = &conn.shared;
    let raw = read_body(&shared.limits, req.into_body()).await?;
    let body: KillRequest = serde_json::from_slice(if raw.is_empty() { b"{}" } else { &raw })
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))?;
    let plan = KillPlan::try_from(body).map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
    let peer = conn.peer;
    let audit_log = shared.now.read().expect("API settings").audit_log.clone();
    // An audit log that cannot be opened is a 500 before anything runs (the run opens it again
    // before anything dies). The user name lookup may ask NSS: on the blocking pool.
    let audit = match plan.opts.dry_run {
        true => None,
        false => {
            let path = audit_log.clone();
            Some(
                blocking(move || AuditLog::open_as(&path, Actor::peer(peer.uid, peer.pid.unwrap_or(0))))
                    .await?
                    .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, exec::chain(&e)))?,
            )
        }
    };
    let lock = shared.kill_lock.clone().lock_owned().await;
    let netns = plan.netns.clone();
    let scope = blocking(move || scope::kill_scope(&netns, peer.pid))
        .await?
        .map_err(|e| error(StatusCode::BAD_REQUEST, exec::chain(&e)))?;
    drop(audit);
    let (mut out, body) = ChunkWriter::new();
    let owner = shared.owner.clone();
    tokio::task::spawn_blocking(move || {
        // The run every caller shares: same selection, preflight, audit and lines as the CLI's.
        let req = run::Request { opts: &plan.opts, scope, json: true, audit_log: &audit_log };
        let actor = Actor::peer(peer.uid, peer.pid.unwrap_or(0));
        match execute(req, actor, &mut out) {
            Ok(totals) => owner.kills_done("api", &totals),
            Err(e) => {
                let line = json!({"type": "fatal", "message": exec::chain(&e)});
                let _ = std::io::Write::write_all(&mut out, format!("{line}\n").as_bytes());
            }
        }
        drop(lock);
    });
    Ok(stream("application/x-ndjson", body))
}
