//! The HTTP layer under object_store's S3 client: a reqwest client wrapped so that every
//! response passes through our hands before object_store sees it.
//!
//! - A ranged GET answered `200 OK` with the whole object (a server or proxy that ignores
//!   `Range`) is turned into the `206` that was asked for: only the asked bytes are passed
//!   on, and the body is dropped (closing the connection) once they have arrived, so the
//!   rest of the object is not read. The origin is warned about once.
//! - A `5xx`, `429` or `408` answer becomes a transport error carrying [`ServerBusy`], which
//!   the driver classifies as worth retrying (object_store's own retries are off: the
//!   origin's [`Remote`](crate::origin::remote::Remote) retries).
//! - The body bytes of ranged GETs are counted as the origin's payload traffic.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_RANGE, RANGE};
use http::{HeaderValue, StatusCode};
use http_body::{Body, Frame};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse,
    HttpResponseBody, HttpService,
};
use object_store::ClientOptions;

use crate::origin::remote::Remote;

/// A server answer that is worth retrying (`5xx`, `429 Too Many Requests`, `408`).
#[derive(Debug, thiserror::Error)]
#[error("server answered {status}")]
pub(crate) struct ServerBusy {
    pub status: StatusCode,
}

/// What the HTTP layer shares with its origin.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The origin's display form (no credentials), for the warning.
    pub origin: String,
    pub remote: Arc<Remote>,
    /// Whether the "server ignores Range" warning was given.
    pub warned: AtomicBool,
}

/// Builds the wrapped client for object_store.
#[derive(Debug)]
pub(crate) struct Connector {
    pub client: reqwest::Client,
    pub shared: Arc<Shared>,
}

impl HttpConnector for Connector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(Service {
            client: self.client.clone(),
            shared: self.shared.clone(),
        }))
    }
}

#[derive(Debug)]
struct Service {
    client: reqwest::Client,
    shared: Arc<Shared>,
}

#[async_trait]
impl HttpService for Service {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let range = req.headers().get(RANGE).and_then(parse_range_header);
        let resp = HttpService::call(&self.client, req).await?;
        let status = resp.status();
        if status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
        {
            return Err(HttpError::new(
                HttpErrorKind::Request,
                ServerBusy { status },
            ));
        }
        let Some((first, last)) = range else {
            return Ok(resp);
        };
        if status == StatusCode::OK {
            if !self.shared.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    origin = %self.shared.origin,
                    "the S3 server ignores Range and sends whole objects: reads take only the \
                     asked bytes and drop the rest of each answer, but every read costs up to \
                     the object's size in transfer"
                );
            }
            return whole_to_partial(resp, first, last, self.shared.clone());
        }
        let (parts, body) = resp.into_parts();
        let body = Window::new(body, self.shared.clone(), 0, None);
        Ok(HttpResponse::from_parts(parts, HttpResponseBody::new(body)))
    }
}

/// `bytes=FIRST-LAST` (the only form the driver sends).
pub(crate) fn parse_range_header(v: &HeaderValue) -> Option<(u64, u64)> {
    let spec = v.to_str().ok()?.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let (first, last) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (first <= last).then_some((first, last))
}

/// A `200` with the whole object, as the `206` for bytes `first..=last` it should have been.
fn whole_to_partial(
    resp: HttpResponse,
    first: u64,
    last: u64,
    shared: Arc<Shared>,
) -> Result<HttpResponse, HttpError> {
    let (mut parts, body) = resp.into_parts();
    let total = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| {
            HttpError::new(
                HttpErrorKind::Decode,
                std::io::Error::other("the server ignored Range and gave no Content-Length"),
            )
        })?;
    if first >= total {
        return Err(HttpError::new(
            HttpErrorKind::Decode,
            std::io::Error::other(format!(
                "range starts at {first}, past the object's {total} bytes"
            )),
        ));
    }
    let last = last.min(total - 1);
    let want = last - first + 1;
    parts.status = StatusCode::PARTIAL_CONTENT;
    let header =
        |s: String| HeaderValue::from_str(&s).map_err(|e| HttpError::new(HttpErrorKind::Decode, e));
    parts.headers.insert(
        CONTENT_RANGE,
        header(format!("bytes {first}-{last}/{total}"))?,
    );
    parts
        .headers
        .insert(CONTENT_LENGTH, header(want.to_string())?);
    let body = Window::new(body, shared, first, Some(want));
    Ok(HttpResponse::from_parts(parts, HttpResponseBody::new(body)))
}

/// A response body that counts what arrives as payload traffic and passes on only bytes
/// `skip..skip + take` of it (all after `skip` when `take` is `None`). Once `take` bytes
/// are through it ends, and dropping it then drops the rest of the answer unread.
struct Window {
    inner: HttpResponseBody,
    shared: Arc<Shared>,
    skip: u64,
    left: Option<u64>,
}

impl Window {
    fn new(inner: HttpResponseBody, shared: Arc<Shared>, skip: u64, take: Option<u64>) -> Self {
        Window {
            inner,
            shared,
            skip,
            left: take,
        }
    }
}

impl Body for Window {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = &mut *self;
        loop {
            if this.left == Some(0) {
                return Poll::Ready(None);
            }
            let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                None => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(frame)) => frame,
            };
            let Ok(mut data) = frame.into_data() else {
                continue;
            };
            let n = data.len() as u64;
            this.shared.remote.traffic().received(n);
            if this.skip >= n {
                this.skip -= n;
                continue;
            }
            let mut data = data.split_off(this.skip as usize);
            this.skip = 0;
            if let Some(left) = &mut this.left {
                let keep = (data.len() as u64).min(*left);
                *left -= keep;
                data.truncate(keep as usize);
            }
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.left == Some(0) || self.inner.is_end_stream()
    }
}
