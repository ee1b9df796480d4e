//! gRPC on a Unix domain socket (`--uds PATH`), for sidecars on the same host: binding it (a
//! stale socket file is removed only when nothing answers on it), its file mode and owner, and
//! serving the same routes and layer as TCP with tonic on tokio's epoll reactor where io_uring
//! does not serve (with io_uring, `uring::accept` hands its connections to the net threads, as
//! TCP's). The file goes when the daemon stops. `connect` is the client's side (ctl, the load
//! generator, the tests).
//!
//! Architecture invariant: never removes a file that is not a socket, nor a socket a process
//! still listens on; never serves TLS (the socket's mode and owner are its access control).

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use super::{Grpc, connections};

/// Who owns the socket file: a user, a group, or both (`--uds-owner user:group`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// The socket's flags, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdsConfig {
    pub path: PathBuf,
    /// `--uds-mode`: permission bits for the file (else as the umask leaves them).
    pub mode: Option<u32>,
    pub owner: Option<Owner>,
}

/// `--uds-mode`: octal permission bits, `0660` or `660`.
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        _ => Err(format!("{text:?} is not an octal file mode such as 0660")),
    }
}

/// `--uds-owner`: `user`, `user:group` or `:group`, by name or number.
pub fn parse_owner(text: &str) -> Result<Owner, String> {
    let (user, group) = match text.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (text, None),
    };
    let uid = match user {
        "" => None,
        user => Some(user_id(user)?),
    };
    let gid = match group {
        None | Some("") => None,
        Some(group) => Some(group_id(group)?),
    };
    if uid.is_none() && gid.is_none() {
        return Err(format!(
            "{text:?} names neither a user nor a group (user, user:group or :group)"
        ));
    }
    Ok(Owner { uid, gid })
}

fn user_id(name: &str) -> Result<u32, String> {
    if let Ok(id) = name.parse() {
        return Ok(id);
    }
    match nix::unistd::User::from_name(name) {
        Ok(Some(user)) => Ok(user.uid.as_raw()),
        Ok(None) => Err(format!("no user {name:?} on this host")),
        Err(error) => Err(format!("looking up user {name:?}: {error}")),
    }
}

fn group_id(name: &str) -> Result<u32, String> {
    if let Ok(id) = name.parse() {
        return Ok(id);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => Err(format!("no group {name:?} on this host")),
        Err(error) => Err(format!("looking up group {name:?}: {error}")),
    }
}

/// A client channel over the daemon's socket at `path`: `endpoint` carries the settings
/// (timeouts); its URI is a placeholder, every connection goes to the socket.
pub async fn connect(
    endpoint: tonic::transport::Endpoint,
    path: &Path,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    endpoint
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}

/// Binds the socket at `config.path`, then sets its mode and owner. A socket file already there
/// is removed first only if connecting to it is refused (a daemon that died without cleaning
/// up); one that answers, or a file that is not a socket, is an error naming the path.
pub fn bind(config: &UdsConfig) -> Result<UnixListener, String> {
    let path = &config.path;
    clear_stale(path)?;
    let listener = UnixListener::bind(path)
        .map_err(|error| format!("cannot listen on {} for gRPC (--uds): {error}", path.display()))?;
    if let Some(mode) = config.mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|error| format!("cannot set the mode of {} (--uds-mode): {error}", path.display()))?;
    }
    if let Some(owner) = config.owner {
        std::os::unix::fs::chown(path, owner.uid, owner.gid)
            .map_err(|error| format!("cannot set the owner of {} (--uds-owner): {error}", path.display()))?;
    }
    Ok(listener)
}

fn clear_stale(path: &Path) -> Result<(), String> {
    let Ok(metadata) = std::fs::symlink_metadata(path) else {
        return Ok(()); // nothing there
    };
    if !metadata.file_type().is_socket() {
        return Err(format!(
            "{} exists and is not a socket: refusing to replace it (--uds)",
            path.display()
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(format!(
            "{} is in use: another process listens on it (--uds)",
            path.display()
        )),
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "removing a stale gRPC socket file nobody listens on");
            std::fs::remove_file(path).map_err(|error| format!("cannot remove the stale {}: {error}", path.display()))
        }
        Err(error) => Err(format!(
            "{} exists and cannot be checked: {error} (--uds)",
            path.display()
        )),
    }
}

/// Serves gRPC on `listener` until `shutdown` resolves, then drains calls in flight, as
/// `serve_grpc` does for TCP (the same routes, layer and connection bound), without TLS.
pub async fn serve(
    listener: UnixListener,
    grpc: Grpc,
    gate: connections::Gate,
    streams_per_connection_max: u32,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let incoming = connections::admitted(UnixListenerStream::new(listener), gate, |_| {});
    tonic::transport::Server::builder()
        .max_concurrent_streams(Some(streams_per_connection_max))
        .layer(grpc.layer)
        .add_routes(grpc.routes)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mode_is_octal_and_at_most_0777() {
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert_eq!(parse_mode("600"), Ok(0o600));
        assert_eq!(parse_mode("0o640"), Ok(0o640));
        assert!(parse_mode("0999").unwrap_err().contains("octal"));
        assert!(parse_mode("1777").is_err(), "no sticky or setuid bits");
    }

    #[test]
    fn an_owner_is_a_user_a_group_or_both_by_name_or_number() {
        assert_eq!(
            parse_owner("0:0"),
            Ok(Owner {
                uid: Some(0),
                gid: Some(0)
            })
        );
        assert_eq!(
            parse_owner("root"),
            Ok(Owner {
                uid: Some(0),
                gid: None
            })
        );
        assert_eq!(
            parse_owner(":0"),
            Ok(Owner {
                uid: None,
                gid: Some(0)
            })
        );
        assert!(parse_owner("no-such-user-here").unwrap_err().contains("no user"));
        assert!(parse_owner(":").unwrap_err().contains("neither"));
    }

    #[test]
    fn a_stale_socket_is_replaced_a_live_one_or_a_plain_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = |name: &str| UdsConfig {
            path: dir.path().join(name),
            mode: Some(0o600),
            owner: None,
        };
        // A socket file whose listener is gone: connecting is refused, so it is replaced.
        drop(std::os::unix::net::UnixListener::bind(dir.path().join("stale")).unwrap());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        let listener = bind(&config("stale")).expect("a stale socket is replaced");
        let mode = std::fs::metadata(dir.path().join("stale"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // That listener is alive now: a second bind is refused, and the file stays.
        let error = bind(&config("stale")).unwrap_err();
        assert!(error.contains("another process listens on it"), "{error}");
        drop(listener);
        std::fs::write(dir.path().join("plain"), b"data").unwrap();
        let error = bind(&config("plain")).unwrap_err();
        assert!(error.contains("is not a socket"), "{error}");
        assert_eq!(std::fs::read(dir.path().join("plain")).unwrap(), b"data");
    }
}
