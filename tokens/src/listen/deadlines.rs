//! Bounds on slow peers: a body that pauses too long or is not done by a
//! deadline, a client that stops reading, and what a connection has in
//! progress (for the idle bound).

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};

use tokio::time::Instant;

use super::BoxError;

/// A bound on one pause: armed when a source first has nothing, disarmed by
/// progress. The timer is made at the first pause only, so a source that is
/// never pending costs nothing.
struct Pause {
    timeout: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
}

impl Pause {
    fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            timer: None,
            armed: false,
        }
    }

    fn progress(&mut self) {
        self.armed = false;
    }

    /// The source is pending: whether the pause has now lasted `timeout`.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let timer = match &mut self.timer {
            Some(timer) if self.armed => timer,
            Some(timer) => {
                timer.as_mut().reset(Instant::now() + self.timeout);
                timer
            }
            None => self
                .timer
                .insert(Box::pin(tokio::time::sleep(self.timeout))),
        };
        self.armed = true;
        timer.as_mut().poll(cx).is_ready()
    }
}

/// A body that fails when its source pauses longer than `timeout` between
/// two frames: a stalled upstream answer or client upload cannot hold a
/// connection for ever, while a long stream that keeps moving is not cut.
pub struct Stall<B> {
    inner: B,
    pause: Pause,
}

impl<B> Stall<B> {
    pub fn new(inner: B, timeout: Duration) -> Self {
        Self {
            inner,
            pause: Pause::new(timeout),
        }
    }
}

/// The error a [`Stall`] body ends with.
#[derive(Debug, thiserror::Error)]
#[error("the body paused longer than {0:?}")]
pub struct Stalled(Duration);

impl<B> hyper::body::Body for Stall<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.pause.progress();
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.pause.expired(cx) {
            tracing::debug!(timeout = ?this.pause.timeout, "a body stalled; cutting it off");
            return Poll::Ready(Some(Err(Box::new(Stalled(this.pause.timeout)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body that fails when it has not ended by a deadline: a client that
/// trickles its request a byte at a time, never pausing long, still cannot
/// hold a request (and the memory it buffers) open for longer. The timer is
/// made only when the body first has to wait.
pub struct Deadline<B> {
    inner: B,
    at: Instant,
    timeout: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> Deadline<B> {
    /// The body must end within `timeout` from now.
    pub fn new(inner: B, timeout: Duration) -> Self {
        Self {
            inner,
            at: Instant::now() + timeout,
            timeout,
            timer: None,
        }
    }
}

/// The error a [`Deadline`] body ends with.
#[derive(Debug, thiserror::Error)]
#[error("the body did not arrive within {0:?}")]
pub struct TooSlow(Duration);

impl<B> hyper::body::Body for Deadline<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let at = this.at;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if timer.as_mut().poll(cx).is_ready() {
            tracing::debug!(timeout = ?this.timeout, "a request body came too slowly; cutting it off");
            return Poll::Ready(Some(Err(Box::new(TooSlow(this.timeout)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A client connection whose writes fail after a pause of `timeout`: a
/// client that stops reading its answers (TCP flow control) cannot hold the
/// connection and the answer's upstream for ever. Writes that progress
/// count as activity: an answer still being sent after its body ended
/// (hyper buffers it) is not idle.
pub(crate) struct WriteDeadline<S> {
    inner: S,
    pause: Pause,
    activity: Arc<Activity>,
    vectored: bool,
}

impl<S> WriteDeadline<S> {
    /// `vectored`: whether to offer vectored writes when `inner` has them
    /// (see `tokenmesh_proto::one_write` for why gRPC answers go without).
    pub(crate) fn new(
        inner: S,
        timeout: Duration,
        activity: Arc<Activity>,
        vectored: bool,
    ) -> Self {
        Self {
            inner,
            pause: Pause::new(timeout),
            activity,
            vectored,
        }
    }

    /// `wrote`: whether a ready `poll` put bytes on the wire. Only that is
    /// activity: hyper flushes whenever the connection is polled, so a
    /// flush that had nothing to do would keep an idle client alive.
    fn bound<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<std::io::Result<T>>,
        wrote: impl FnOnce(&T) -> bool,
    ) -> Poll<std::io::Result<T>> {
        if let Poll::Ready(result) = &poll {
            self.pause.progress();
            if result.as_ref().is_ok_and(wrote) {
                self.activity.touch();
            }
            return poll;
        }
        if self.pause.expired(cx) {
            tracing::debug!("a client stopped reading; closing its connection");
            return Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()));
        }
        Poll::Pending
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.bound(cx, poll, |&n| n > 0)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.bound(cx, poll, |&n| n > 0)
    }

    fn is_write_vectored(&self) -> bool {
        self.vectored && self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.bound(cx, poll, |()| false)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.bound(cx, poll, |()| false)
    }
}

/// What a connection is doing, for the idle bound: requests in progress
/// (until their answer's body is sent) and when the last one ended.
pub(crate) struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    /// Whether a request ever began: until then the (shorter) bound on the
    /// first request applies, whatever the connection wrote.
    served: AtomicBool,
    /// Milliseconds from `opened` to when the last request ended.
    last: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            last: AtomicU64::new(0),
        })
    }

    pub(crate) fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.served.store(true, Ordering::Release);
        InFlight(self.clone())
    }

    pub(crate) fn in_flight(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    /// When the connection has to be closed unless a request comes: its
    /// first request must begin within `first` of the accept, and later it
    /// may stay `idle` after the last activity. `None` while a request is in
    /// progress.
    pub(crate) fn idle_until(&self, first: Duration, idle: Duration) -> Option<Instant> {
        if self.in_flight() {
            return None;
        }
        if !self.served.load(Ordering::Acquire) {
            return Some(self.opened + first);
        }
        let last = Duration::from_millis(self.last.load(Ordering::Acquire));
        Some(self.opened + last + idle)
    }

    pub(crate) fn touch(&self) {
        let since = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(since, Ordering::Release);
    }
}

/// One request in progress; ends when dropped (with its answer's body).
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An answer's body that keeps its request counted as in progress.
pub(crate) struct Tracked<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B> Tracked<B> {
    pub(crate) fn new(body: B, in_flight: InFlight) -> Self {
        Self {
            body,
            _in_flight: in_flight,
        }
    }
}

impl<B> hyper::body::Body for Tracked<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn a_stalled_body_is_cut_off_and_a_moving_one_is_not() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let mut body = Stall::new(body, Duration::from_secs(1));
        let feeder = tokio::spawn(async move {
            // Ten pieces 100 ms apart: a whole second, never a 1 s pause.
            for _ in 0..10 {
                tx.send(Ok(Frame::data(Bytes::from_static(b"x"))))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // Then silence, with the sender kept alive.
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(tx);
        });
        for _ in 0..10 {
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "x");
        }
        let started = Instant::now();
        let end = body.frame().await.unwrap();
        assert!(end.unwrap_err().is::<Stalled>());
        // Cut off by the bound, not by the feeder's end 30 s later.
        assert!(started.elapsed() < Duration::from_secs(10));
        feeder.abort();
    }

    #[tokio::test]
    async fn a_trickled_body_is_cut_off_at_its_deadline() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let mut body = Deadline::new(body, Duration::from_secs(1));
        // A byte every 100 ms: never a long pause, yet never done.
        let feeder = tokio::spawn(async move {
            while tx
                .send(Ok(Frame::data(Bytes::from_static(b"x"))))
                .await
                .is_ok()
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let started = Instant::now();
        let mut pieces = 0;
        let error = loop {
            match body.frame().await {
                Some(Ok(_)) => pieces += 1,
                Some(Err(error)) => break error,
                None => panic!("the body cannot end"),
            }
        };
        assert!(error.is::<TooSlow>(), "{error}");
        assert!(pieces > 1, "cut while it was still moving, not at a pause");
        assert!(started.elapsed() < Duration::from_secs(10));
        feeder.abort();
    }

    #[tokio::test]
    async fn a_body_done_in_time_is_whole() {
        let body = http_body_util::Full::new(Bytes::from_static(b"grant_type=x"));
        let body = Deadline::new(body, Duration::from_millis(1));
        tokio::time::sleep(Duration::from_millis(5)).await;
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes, "grant_type=x");
    }
}
