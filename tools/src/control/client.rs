//! The client side: a tonic channel over the daemon's Unix socket.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::transport::{Endpoint, Uri};

use super::proto::control_client::ControlClient;

/// A client of the daemon answering on `socket`.
pub type Client = ControlClient<tonic::transport::Channel>;

/// Why there is no daemon to talk to.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Nothing listens on the socket (no daemon runs with this state directory).
    #[error("no daemon answers on {0} (is musicfsd running with this state directory?)")]
    NoDaemon(PathBuf),
    /// The socket is there but refuses us.
    #[error("cannot connect to {path}: {source}")]
    Refused {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Connects to the daemon's control socket.
pub async fn connect(socket: &Path) -> Result<Client, ConnectError> {
    // Tried once directly, for a clear error: tonic's lazy connector would only say
    // "transport error".
    if let Err(e) = tokio::net::UnixStream::connect(socket).await {
        return Err(match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                ConnectError::NoDaemon(socket.to_path_buf())
            }
            _ => ConnectError::Refused {
                path: socket.to_path_buf(),
                source: e,
            },
        });
    }
    let path = socket.to_path_buf();
    // The URI is required by the API and unused: every connection goes to the socket.
    let channel = Endpoint::from_static("http://musicfsd.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| ConnectError::Refused {
            path: socket.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
    Ok(ControlClient::new(channel))
}
