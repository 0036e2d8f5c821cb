//! The client's request body on its way to the upstream, and the record of
//! how far it got: a failed exchange is the client's fault when its body
//! failed, the upstream's otherwise.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use hyper::Request;
use hyper::body::Incoming;

/// How far the client's request body got on its way to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyState {
    Sending,
    /// Every frame was handed to the upstream connection (or there was no body).
    Complete,
    /// Reading it from the client failed.
    Failed,
}

/// The record a [`RequestBody`] keeps, read by `Proxy::forward` when the
/// exchange fails. A request without a body has none (nothing allocated).
#[derive(Clone, Default)]
pub(super) struct BodyProgress(Option<Arc<AtomicU8>>);

impl BodyProgress {
    #[inline]
    pub(super) fn state(&self) -> BodyState {
        match self.0.as_ref().map(|s| s.load(Ordering::Acquire)) {
            None => BodyState::Complete,
            Some(s) => BodyState::from_u8(s),
        }
    }

    #[inline]
    fn set(&self, state: BodyState) {
        if let Some(s) = &self.0 {
            s.store(state as u8, Ordering::Release);
        }
    }
}

impl BodyState {
    #[inline]
    fn from_u8(v: u8) -> BodyState {
        match v {
            x if x == BodyState::Complete as u8 => BodyState::Complete,
            x if x == BodyState::Failed as u8 => BodyState::Failed,
            _ => BodyState::Sending,
        }
    }
}

/// The client's request body on its way to the upstream, streamed as it
/// arrives, recording whether it was read to its end or failed. hyper's
/// client reports a failing request body as a user error of the exchange
/// (`hyper::Error::is_user`, kind `User::Body`, with the body's own error
/// as its source), which the pooled client wraps once more; the body's own
/// record tells a client's fault from the upstream's on every path without
/// unpicking those chains.
pub struct RequestBody {
    inner: Incoming,
    progress: BodyProgress,
}

impl RequestBody {
    /// Wraps `req`'s body; the returned record follows it.
    #[inline]
    pub(super) fn watch(req: Request<Incoming>) -> (Request<RequestBody>, BodyProgress) {
        use hyper::body::Body as _;
        let (parts, inner) = req.into_parts();
        let progress = if inner.is_end_stream() {
            BodyProgress::default()
        } else {
            BodyProgress(Some(Arc::new(AtomicU8::new(BodyState::Sending as u8))))
        };
        let body = RequestBody {
            inner,
            progress: progress.clone(),
        };
        (Request::from_parts(parts, body), progress)
    }
}

impl hyper::body::Body for RequestBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    #[inline]
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.progress.set(BodyState::Complete),
            Poll::Ready(Some(Err(_))) => this.progress.set(BodyState::Failed),
            // hyper stops polling once the body says it has ended.
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => {
                this.progress.set(BodyState::Complete)
            }
            _ => {}
        }
        polled
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
