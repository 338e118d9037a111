//! The accept loop the subresource proxy and the webhook server share.

use std::future::Future;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Accepts TCP connections until the process ends and hands each to `handle` in its own task.
/// A failed accept (e.g. out of file descriptors) is logged as `{what}: accept failed` and
/// retried after 50 ms; finished connection tasks are reaped as they end.
pub async fn accept_loop<F, Fut>(listener: TcpListener, what: &'static str, mut handle: F)
where
    F: FnMut(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    conns.spawn(handle(tcp));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "{what}: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}
