//! The response body the proxy streams back, which records the request's
//! metrics exactly once: when the body ends, fails, or is dropped by a client
//! that went away.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

use crate::metrics::{BackendMetrics, UpstreamErrorKind};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What to record when the response is over.
pub struct Recorder {
    pub metrics: BackendMetrics,
    pub code: u16,
    pub start: Instant,
}

impl Recorder {
    fn finish(self) {
        self.metrics.record(self.code, self.start.elapsed());
    }
}

pub struct MeteredBody {
    inner: UnsyncBoxBody<Bytes, BoxError>,
    recorder: Option<Recorder>,
}

impl MeteredBody {
    pub fn new<B>(body: B, recorder: Option<Recorder>) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let inner = body.map_err(Into::into).boxed_unsync();
        let mut this = Self { inner, recorder };
        // An empty body may never be polled; record now so the count is
        // visible as soon as the client has the response.
        if this.inner.is_end_stream()
            && let Some(r) = this.recorder.take()
        {
            r.finish();
        }
        this
    }

    /// A short text body, e.g. for errors the proxy answers itself.
    pub fn text(text: impl Into<String>, recorder: Option<Recorder>) -> Self {
        Self::new(
            http_body_util::Full::new(Bytes::from(text.into())),
            recorder,
        )
    }

    fn finish(&mut self) {
        if let Some(r) = self.recorder.take() {
            r.finish();
        }
    }
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Err(_))) => {
                if let Some(r) = &self.recorder {
                    r.metrics.record_upstream_error(UpstreamErrorKind::Reset);
                }
                self.finish();
            }
            Poll::Ready(Some(Ok(_))) => {
                if self.inner.is_end_stream() {
                    self.finish();
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        self.finish();
    }
}
