//! The glue between the listeners' connections (`honeycell_tls::conn`) and
//! tonic: the connection type tonic serves, and the layer that counts each
//! call as a request in flight until its response stream ends, so that the
//! connection's idle timeout never cuts a call (a DoGet read slowly, a
//! Flight SQL query computing) and does close connections left idle.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use honeycell_tls::conn::{Activity, Conn, Tracked};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

/// An accepted connection as tonic serves it.
pub(crate) struct FlightConn(pub(crate) Conn);

/// What tonic puts in each request's extensions: the connection's
/// activity, and the peer information tonic's own types would carry.
#[derive(Clone)]
pub(crate) struct ConnInfo {
    activity: Arc<Activity>,
    peer: Peer,
}

#[derive(Clone)]
enum Peer {
    Tcp(TcpConnectInfo),
    Tls(TlsConnectInfo<TcpConnectInfo>),
}

impl Connected for FlightConn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        let peer = match self.0.tls() {
            Some(tls) => Peer::Tls(tls.connect_info()),
            None => Peer::Tcp(self.0.tcp().connect_info()),
        };
        ConnInfo {
            activity: self.0.activity().clone(),
            peer,
        }
    }
}

impl AsyncRead for FlightConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for FlightConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// Counts each call as in flight on its connection, from its arrival until
/// its response body is done, and puts tonic's own peer information
/// (`TcpConnectInfo`, or `TlsConnectInfo` under TLS) back in the request,
/// where `Request::remote_addr` looks for it.
#[derive(Clone, Debug)]
pub(crate) struct InFlight<S>(pub(crate) S);

impl<S, B, R> tower::Service<http::Request<B>> for InFlight<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Tracked<R>>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let info = request.extensions_mut().remove::<ConnInfo>();
        let guard = info.map(|info| {
            match info.peer {
                Peer::Tcp(peer) => {
                    request.extensions_mut().insert(peer);
                }
                Peer::Tls(peer) => {
                    request.extensions_mut().insert(peer);
                }
            }
            info.activity.request()
        });
        let response = self.0.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| Tracked::new(body, guard)))
        })
    }
}
