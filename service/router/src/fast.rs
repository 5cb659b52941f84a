//! The HTTP/1.1 fast path. Most traffic is plain keep-alive HTTP/1.1 to a serving
//! workload; for that, this module parses the head (httparse), applies the same routing,
//! credential and header rules as [`crate::http`], and relays the exchange over one
//! backend connection owned by the client connection, in the client's own task.
//!
//! Anything else is handed to hyper at a request boundary, with the bytes already read:
//! HTTP/2, `Upgrade`, chunked or `Expect` request bodies, HTTP/1.0, a malformed head,
//! and every request that is not forwarded (401, 404, 400, 503) or whose backend cannot
//! be reached before the request was committed (hyper retries or answers 502). So those
//! answers are exactly the ones [`crate::http`] gives, from one implementation. The one
//! exception is a request already sent that must not be sent again (not idempotent, or
//! its body streamed through): the fast path answers its 502 itself.

use crate::head::{self, Framing, ResponseHead};
use crate::http::HttpRouter;
use crate::metrics::{GaugeGuard, WorkloadMetrics};
use crate::parse;
use crate::table::{Access, Route};
use bytes::{Buf, Bytes, BytesMut};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Longest response head relayed here.
const MAX_HEAD: usize = 64 * 1024;
const COPY_BUFFER: usize = 64 * 1024;

/// How the fast path left a client connection.
pub(crate) enum Outcome {
    /// Done: the client or the router closed it.
    Closed,
    /// Continue with hyper; these bytes were read from the client and not consumed.
    HandOff(Bytes),
}

/// A request the fast path forwards, to the route of the connection's
/// [`Decisions::granted`].
struct Plan {
    head_len: usize,
    head: Vec<u8>,
    body_len: u64,
    /// The method may be sent again ([`parse::is_idempotent`]).
    replayable: bool,
    is_head: bool,
    client_close: bool,
}

/// A granted access: this credential may reach this route.
struct Grant {
    token: Vec<u8>,
    route: Arc<Route>,
    metrics: Arc<WorkloadMetrics>,
    /// When the credential expires (unix seconds), if it does.
    expires_at: Option<i64>,
}

/// The last access decision of one client connection. A keep-alive client sends the
/// same credential to the same workload on every request, and while the route table
/// is unchanged the same inputs get the same answer: so the credential is hashed and
/// the shared table read once per connection and table version, not per request.
struct Decisions {
    table_changes: watch::Receiver<u64>,
    granted: Option<Grant>,
}

impl Decisions {
    fn new(router: &HttpRouter) -> Self {
        Decisions {
            table_changes: router.table().changes(),
            granted: None,
        }
    }

    /// The grant that lets `token` reach `workload_id`, kept in
    /// [`Decisions::granted`]; `None` when it may not.
    fn allow(
        &mut self,
        router: &HttpRouter,
        token: Option<&str>,
        workload_id: &str,
    ) -> Option<&Grant> {
        if self.table_changes.has_changed().unwrap_or(true) {
            // Marked before the table is read: a change after this point is seen by
            // the next request.
            self.table_changes.mark_unchanged();
            self.granted = None;
        }
        let token = token?;
        let reusable = self.granted.as_ref().is_some_and(|grant| {
            grant.route.workload_id == workload_id
                && same_secret(&grant.token, token.as_bytes())
                && grant.expires_at.is_none_or(|at| {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| (d.as_secs() as i64) < at)
                        .unwrap_or(false)
                })
        });
        if !reusable {
            self.granted = match router.table().authorize_until(Some(token), workload_id) {
                (Access::Granted(route), expires_at) => Some(Grant {
                    token: token.as_bytes().to_vec(),
                    metrics: router.metrics_of(&route.workload_id),
                    route,
                    expires_at,
                }),
                (Access::Unauthenticated | Access::NotFound, _) => None,
            };
        }
        self.granted.as_ref()
    }
}

/// Whether the backend closed (or broke) a kept-alive connection while it was idle:
/// an end of stream, an error, or bytes nobody asked for are waiting on it. One
/// non-blocking peek, independent of when the runtime last polled the socket.
fn closed_while_idle(stream: &TcpStream) -> bool {
    let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    match socket2::SockRef::from(stream).peek(&mut probe) {
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        Ok(_) => true,
    }
}

/// Compares two credentials in time independent of where they differ: a connection
/// may carry several users' requests (a pooling proxy in front of the router).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

struct Upstream {
    address: String,
    stream: TcpStream,
    buf: BytesMut,
}

/// Parses and decides one request; `Ok(None)` when the head is not complete yet,
/// `Err(())` to hand the connection to hyper.
fn plan(
    router: &HttpRouter,
    buf: &[u8],
    peer_ip: &str,
    decisions: &mut Decisions,
) -> Result<Option<Plan>, ()> {
    let mut storage = [httparse::EMPTY_HEADER; head::MAX_HEADERS];
    let request = match head::read_request(buf, &mut storage) {
        Ok(Some(request)) => request,
        Ok(None) => return Ok(None),
        Err(head::NotFast) => return Err(()),
    };
    let target = parse::find_target(
        request.host,
        request.workload_header,
        request.path,
        router.base_domain(),
    )
    .map_err(|_| ())?;
    let credential = parse::credential(request.authorization, &target.path_and_query);
    let Some(grant) = decisions.allow(router, credential.token.as_deref(), &target.workload_id)
    else {
        return Err(());
    };
    if let Some(limit) = router.settings().rate_limit {
        // Over the limit: hyper answers the 429 (one implementation of it).
        if grant.metrics.admit(limit).is_err() {
            return Err(());
        }
    }
    let route = &*grant.route;
    let Some(backend) = route.serving_backend() else {
        return Err(());
    };

    let mut head = Vec::with_capacity(request.len + 256);
    head::write_forwarded_request(
        &request,
        &head::Forwarding {
            path: credential.path,
            query: credential.query.as_deref(),
            backend,
            client_ip: peer_ip,
            workload_id: &route.workload_id,
            strip_authorization: credential.from_authorization,
            new_traceparent: &parse::new_traceparent_bytes(),
        },
        &mut head,
    );
    Ok(Some(Plan {
        head_len: request.len,
        head,
        body_len: request.content_length,
        replayable: parse::is_idempotent(request.method),
        is_head: request.method == "HEAD",
        client_close: request.close,
    }))
}

/// Where the request head at the start of `buf` ends (after its blank line).
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
}

/// The 431 answer to a request head over `limit` bytes; the connection then closes,
/// since the rest of that head cannot be told from a next request.
fn head_too_large(limit: usize) -> Vec<u8> {
    let body = format!("request head is over {limit} bytes; send fewer or shorter headers\n");
    format!(
        "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Relays requests until the client leaves, `stop` is set between requests, or a
/// request needs hyper.
pub(crate) async fn run(
    client: &mut TcpStream,
    peer: SocketAddr,
    router: &HttpRouter,
    stop: &mut watch::Receiver<bool>,
) -> Outcome {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut upstream: Option<Upstream> = None;
    let peer_ip = peer.ip().to_string();
    let mut decisions = Decisions::new(router);
    let settings = router.settings();
    loop {
        // A whole request head: an idle connection closes after `idle_timeout`, one
        // that has started a head must finish it within `header_read_timeout`.
        let mut head_deadline: Option<tokio::time::Instant> = None;
        let idle_deadline = tokio::time::Instant::now() + settings.idle_timeout;
        let plan = loop {
            if !buf.is_empty() {
                // Every request head is held to `max_header_bytes` here, whichever
                // path serves it: hyper's own limit cannot go below 8 KiB.
                match plan(router, &buf, &peer_ip, &mut decisions) {
                    Ok(Some(plan)) if plan.head_len <= settings.max_header_bytes => break plan,
                    Ok(None) if buf.len() <= settings.max_header_bytes => {}
                    Err(())
                        if head_end(&buf).is_some_and(|end| end <= settings.max_header_bytes) =>
                    {
                        return Outcome::HandOff(buf.freeze())
                    }
                    Err(())
                        if head_end(&buf).is_none() && buf.len() <= settings.max_header_bytes => {}
                    _ => {
                        tracing::debug!(%peer, limit = settings.max_header_bytes, "request head too large");
                        let _ = client
                            .write_all(&head_too_large(settings.max_header_bytes))
                            .await;
                        return Outcome::Closed;
                    }
                }
                head_deadline.get_or_insert_with(|| {
                    tokio::time::Instant::now() + settings.header_read_timeout
                });
            }
            if *stop.borrow() && buf.is_empty() {
                return Outcome::Closed;
            }
            let deadline = head_deadline.unwrap_or(idle_deadline);
            let read = tokio::select! {
                read = client.read_buf(&mut buf) => read,
                _ = stop.wait_for(|s| *s), if buf.is_empty() => return Outcome::Closed,
                () = tokio::time::sleep_until(deadline) => {
                    tracing::debug!(%peer, partial = !buf.is_empty(), "client connection timed out waiting for a request head");
                    return Outcome::Closed;
                }
            };
            match read {
                Ok(0) | Err(_) => return Outcome::Closed,
                Ok(_) => {}
            }
        };
        let started = Instant::now();
        // `plan` succeeded, so the connection's grant is this request's, and serving.
        let Some(grant) = decisions.granted.as_ref() else {
            return Outcome::HandOff(buf.freeze());
        };
        let Some(backend) = grant.route.serving_backend() else {
            return Outcome::HandOff(buf.freeze());
        };
        let metrics = &*grant.metrics;
        let _in_flight = GaugeGuard::new(metrics, |m| &m.active_http);

        // The backend connection of this client connection, for this backend. Before a
        // request that must not be sent twice, one the backend closed while it was idle
        // is replaced: on it the request would fail unanswered and could not be replayed.
        let reusable = upstream.as_ref().is_some_and(|u| {
            u.address == backend && (plan.replayable || !closed_while_idle(&u.stream))
        });
        if !reusable {
            let connected =
                tokio::time::timeout(router.connect_timeout(), TcpStream::connect(backend)).await;
            match connected {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    upstream = Some(Upstream {
                        address: backend.to_string(),
                        stream,
                        buf: BytesMut::with_capacity(16 * 1024),
                    });
                }
                // hyper retries (idempotent) or answers 502.
                _ => return Outcome::HandOff(buf.freeze()),
            }
        }
        let Some(up) = upstream.as_mut() else {
            return Outcome::HandOff(buf.freeze());
        };

        // The request: head and the body part already read go in one write.
        let buffered_body = (buf.len() - plan.head_len).min(plan.body_len as usize);
        let whole = buffered_body as u64 == plan.body_len;
        let mut first = plan.head;
        first.extend_from_slice(&buf[plan.head_len..plan.head_len + buffered_body]);
        if up.stream.write_all(&first).await.is_err() {
            // A backend that closed an idle connection: let hyper start afresh.
            return Outcome::HandOff(buf.freeze());
        }
        let mut sent = buffered_body as u64;
        let request_bytes = buf.split_to(plan.head_len + buffered_body);
        if !whole {
            let remaining = plan.body_len - sent;
            let mut body = (&mut *client).take(remaining);
            match copy_exact(&mut body, &mut up.stream, remaining).await {
                Ok(n) => sent += n,
                Err(_) => return Outcome::Closed,
            }
        }
        metrics
            .local()
            .bytes_to_backend
            .fetch_add(sent, Ordering::Relaxed);

        // The response head (1xx heads are relayed and the next one read).
        let response = loop {
            match relay_head(up, client, plan.is_head, plan.client_close).await {
                Ok(Some(head)) => break head,
                Ok(None) => continue,
                Err(Failure::BeforeHead) if whole && plan.replayable => {
                    // Nothing reached the client and the request may be sent again:
                    // hyper sends it once more, or answers.
                    let mut again = BytesMut::from(&request_bytes[..]);
                    again.extend_from_slice(&buf);
                    return Outcome::HandOff(again.freeze());
                }
                Err(Failure::BeforeHead) => {
                    // The backend has the request (it may have taken effect), or its
                    // streamed body is gone: never sent twice.
                    metrics.observe(502, started.elapsed());
                    let text = "the workload failed to answer after receiving the request, which was not sent again because it may have taken effect; retry if that is safe\n";
                    let reply = format!(
                        "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                        text.len()
                    );
                    let _ = client.write_all(reply.as_bytes()).await;
                    return Outcome::Closed;
                }
                Err(Failure::After) => return Outcome::Closed,
            }
        };
        metrics.observe(response.status, started.elapsed());
        let mut reply = response.head;
        let copied = match response.framing {
            Framing::None => client.write_all(&reply).await.map(|()| 0),
            Framing::Length(n) => {
                // Head and the body bytes already read in one write: a small answer
                // is one syscall.
                let from_buffer = (up.buf.len() as u64).min(n) as usize;
                reply.extend_from_slice(&up.buf.split_to(from_buffer));
                let rest = n - from_buffer as u64;
                match client.write_all(&reply).await {
                    Ok(()) if rest == 0 => Ok(n),
                    Ok(()) => {
                        let mut body = (&mut up.stream).take(rest);
                        copy_exact(&mut body, client, rest)
                            .await
                            .map(|m| m + from_buffer as u64)
                    }
                    Err(e) => Err(e),
                }
            }
            Framing::Chunked => match client.write_all(&reply).await {
                Ok(()) => copy_chunked(up, client).await,
                Err(e) => Err(e),
            },
            Framing::UntilClose => {
                let pending = std::mem::take(&mut up.buf);
                let mut total = pending.len() as u64;
                reply.extend_from_slice(&pending);
                let mut result = client.write_all(&reply).await;
                if result.is_ok() {
                    result = tokio::io::copy(&mut up.stream, client).await.map(|n| {
                        total += n;
                    });
                }
                result.map(|()| total)
            }
        };
        match copied {
            Ok(n) => {
                metrics
                    .local()
                    .bytes_from_backend
                    .fetch_add(n, Ordering::Relaxed);
            }
            Err(_) => return Outcome::Closed,
        }
        if response.backend_close || !up.buf.is_empty() {
            upstream = None;
        }
        if plan.client_close || response.framing == Framing::UntilClose {
            let _ = client.shutdown().await;
            return Outcome::Closed;
        }
    }
}

enum Failure {
    /// The backend failed before any byte of the answer reached the client.
    BeforeHead,
    After,
}

/// Reads one response head from the backend and rewrites it ([`head::read_response`]).
/// Informational (1xx) heads are written to the client here and `Ok(None)` returned:
/// the final one follows.
async fn relay_head(
    up: &mut Upstream,
    client: &mut TcpStream,
    is_head: bool,
    client_close: bool,
) -> Result<Option<ResponseHead>, Failure> {
    let response = loop {
        match head::read_response(&up.buf, is_head, client_close) {
            Ok(Some(response)) => break response,
            Ok(None) if up.buf.len() <= MAX_HEAD => {}
            _ => return Err(Failure::BeforeHead),
        }
        match up.stream.read_buf(&mut up.buf).await {
            Ok(0) | Err(_) => return Err(Failure::BeforeHead),
            Ok(_) => {}
        }
    };
    up.buf.advance(response.len);
    if response.status == 101 {
        // Never asked for: a broken backend.
        return Err(Failure::BeforeHead);
    }
    if (100..200).contains(&response.status) {
        client
            .write_all(&response.head)
            .await
            .map_err(|_| Failure::After)?;
        return Ok(None);
    }
    Ok(Some(response))
}

/// Copies exactly `n` bytes (fewer is an error).
async fn copy_exact<R, W>(from: &mut R, to: &mut W, n: u64) -> std::io::Result<u64>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let copied = tokio::io::copy_buf(
        &mut tokio::io::BufReader::with_capacity(COPY_BUFFER, from),
        to,
    )
    .await?;
    if copied == n {
        Ok(copied)
    } else {
        Err(std::io::ErrorKind::UnexpectedEof.into())
    }
}

/// Relays a chunked body as it is framed, reading the framing only to find its end.
async fn copy_chunked(up: &mut Upstream, client: &mut TcpStream) -> std::io::Result<u64> {
    let mut total = 0u64;
    loop {
        let line = read_line(up).await?;
        let size = head::chunk_size(&line)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
        client.write_all(&line).await?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                let trailer = read_line(up).await?;
                client.write_all(&trailer).await?;
                if trailer.as_ref() == b"\r\n" {
                    return Ok(total);
                }
            }
        }
        // The chunk and its CRLF; a size that cannot be followed is an error.
        let mut left = head::chunk_span(size)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
        while left > 0 {
            if up.buf.is_empty() && up.stream.read_buf(&mut up.buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let take = (up.buf.len() as u64).min(left) as usize;
            let part = up.buf.split_to(take);
            client.write_all(&part).await?;
            left -= take as u64;
        }
        total += size;
    }
}

/// One CRLF-terminated line from the backend, with its CRLF.
async fn read_line(up: &mut Upstream) -> std::io::Result<Bytes> {
    loop {
        if let Some(end) = up.buf.windows(2).position(|w| w == b"\r\n") {
            return Ok(up.buf.split_to(end + 2).freeze());
        }
        if up.buf.len() > MAX_HEAD {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
        if up.stream.read_buf(&mut up.buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}
