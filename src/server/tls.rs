//! TLS for gRPC (`--tls-cert`, `--tls-key`, `--tls-client-ca`): rustls through tonic, on the
//! epoll transport (the io_uring one has no TLS; `--tls-cert` selects epoll).
//!
//! Architecture invariant: reads the PEM files once at start-up and hands tonic its config; no
//! key material is logged.

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|error| format!("{flag} {}: {error}", path.display()))
}

/// The server's TLS config: its certificate chain and key, and with `client_ca` mutual TLS
/// (a client must present a certificate that CA signed).
pub fn config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<ServerTlsConfig, String> {
    let identity = Identity::from_pem(read("--tls-cert", cert)?, read("--tls-key", key)?);
    let mut config = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = client_ca {
        config = config.client_ca_root(Certificate::from_pem(read("--tls-client-ca", ca)?));
    }
    // Parse the PEM now: a bad file is a one-line exit at start-up, not a server that never serves.
    tonic::transport::Server::builder()
        .tls_config(config.clone())
        .map_err(|error| format!("--tls-cert/--tls-key/--tls-client-ca: {error}"))?;
    Ok(config)
}

/// A cluster node's mutual TLS with its peers (`--peer-tls-cert`, `--peer-tls-key`,
/// `--peer-tls-ca`): the same certificate serves the peer port and identifies the node to the
/// others; only certificates the cluster's CA signed are let in, either way.
pub fn peer_config(cert: &Path, key: &Path, ca: &Path) -> Result<(ServerTlsConfig, ClientTlsConfig), String> {
    let cert = read("--peer-tls-cert", cert)?;
    let key = read("--peer-tls-key", key)?;
    let ca = Certificate::from_pem(read("--peer-tls-ca", ca)?);
    let server = ServerTlsConfig::new()
        .identity(Identity::from_pem(&cert, &key))
        .client_ca_root(ca.clone());
    tonic::transport::Server::builder()
        .tls_config(server.clone())
        .map_err(|error| format!("--peer-tls-cert/--peer-tls-key/--peer-tls-ca: {error}"))?;
    let client = ClientTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .ca_certificate(ca);
    Ok((server, client))
}
