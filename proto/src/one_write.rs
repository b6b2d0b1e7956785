//! A TCP connection that offers h2 no vectored writes.
//!
//! With vectored I/O, h2 keeps a DATA payload over 256 bytes as a separate
//! buffer and must flush it before it can encode the next frame, so a unary
//! gRPC response (HEADERS, DATA, trailers) leaves in two writes. Without it,
//! payloads up to 1 KiB are copied into h2's write buffer and the whole
//! response leaves in one write: half the syscalls, and half the wake-ups of
//! the peer. Tokens, introspection answers and the sidecar's ext_authz answers
//! are well under 1 KiB.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tonic::transport::server::{Connected, TcpConnectInfo};

pub struct OneWrite(pub TcpStream);

impl AsyncRead for OneWrite {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

/// `is_write_vectored` keeps its default, `false`.
impl AsyncWrite for OneWrite {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl Connected for OneWrite {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn offers_no_vectored_writes_and_passes_bytes_through() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (mut client, (server, _)) = (client.unwrap(), accepted.unwrap());
        assert!(server.is_write_vectored(), "a bare TcpStream offers them");
        let mut server = OneWrite(server);
        assert!(!server.is_write_vectored());
        assert_eq!(
            server.connect_info().remote_addr(),
            client.local_addr().ok()
        );
        server.write_all(b"frames").await.unwrap();
        let mut read = [0u8; 6];
        client.read_exact(&mut read).await.unwrap();
        assert_eq!(&read, b"frames");
    }
}
