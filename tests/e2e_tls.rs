//! End to end: TLS (`--tls-cert`, `--tls-key`) and mutual TLS (`--tls-client-ca`), with and
//! without bearer tokens: a client that trusts the CA is served, a plaintext one is not, and
//! with mutual TLS a client without a certificate the CA signed is refused.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use agentkeeper::proto as pb;
use common::Daemon;
use pb::entitlements_service_client::EntitlementsServiceClient;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A CA, a server certificate for localhost and 127.0.0.1, and a client certificate.
struct Pki {
    _dir: tempfile::TempDir,
    ca_pem: String,
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert_pem: String,
    client_key_pem: String,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client = CertificateParams::new(vec!["worker-1".to_string()])
        .unwrap()
        .signed_by(&client_key, &ca)
        .unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    Pki {
        ca: write("ca.pem", &ca.pem()),
        server_cert: write("server.pem", &server.pem()),
        server_key: write("server.key", &server_key.serialize_pem()),
        ca_pem: ca.pem(),
        client_cert_pem: client.pem(),
        client_key_pem: client_key.serialize_pem(),
        _dir: dir,
    }
}

/// Starts a daemon with `args` and waits until it serves.
fn start(args: &[String]) -> Daemon {
    // TLS is served on epoll; --io uring with TLS is refused (tested below).
    let mut all = vec!["--io=auto"];
    all.extend(args.iter().map(String::as_str));
    Daemon::start(&all)
}

fn tls_args(pki: &Pki) -> Vec<String> {
    vec![
        format!("--tls-cert={}", pki.server_cert.display()),
        format!("--tls-key={}", pki.server_key.display()),
    ]
}

async fn tls_channel(daemon: &Daemon, pki: &Pki, with_client_cert: bool) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost");
    if with_client_cert {
        tls = tls.identity(Identity::from_pem(&pki.client_cert_pem, &pki.client_key_pem));
    }
    Channel::from_shared(format!("https://127.0.0.1:{}", daemon.port))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
}

async fn list(channel: Channel) -> Result<(), tonic::Status> {
    EntitlementsServiceClient::new(channel)
        .list_policies(pb::ListPoliciesRequest::default())
        .await
        .map(|_| ())
}

#[tokio::test]
async fn a_client_that_trusts_the_ca_is_served_over_tls_and_plaintext_is_not() {
    let pki = pki();
    let daemon = start(&tls_args(&pki));
    let channel = tls_channel(&daemon, &pki, false).await.expect("a TLS connection");
    list(channel).await.expect("served over TLS");
    let plaintext = Channel::from_shared(daemon.url())
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect()
        .await;
    match plaintext {
        Err(_) => {}
        Ok(channel) => {
            let refused = list(channel).await.expect_err("plaintext is not served");
            eprintln!("tls: a plaintext call to the TLS port: {refused:?}");
        }
    }
    assert!(daemon.stderr().contains("tls=true"), "the log says TLS is on");
}

#[tokio::test]
async fn with_a_client_ca_only_clients_with_a_certificate_it_signed_are_served() {
    let pki = pki();
    let mut args = tls_args(&pki);
    args.push(format!("--tls-client-ca={}", pki.ca.display()));
    let daemon = start(&args);
    let with_cert = tls_channel(&daemon, &pki, true).await.expect("a mutual TLS connection");
    list(with_cert).await.expect("served with a client certificate");
    let without = match tls_channel(&daemon, &pki, false).await {
        Err(error) => format!("connect failed: {error}"),
        Ok(channel) => format!("{:?}", list(channel).await.expect_err("refused without a certificate")),
    };
    eprintln!("tls: mutual TLS without a client certificate: {without}");
}

#[tokio::test]
async fn tls_with_an_explicit_io_uring_is_refused_at_start() {
    let pki = pki();
    let mut args = tls_args(&pki);
    args.push("--io=uring".into());
    let mut daemon = Daemon::spawn(&args);
    let status = daemon.wait_exit();
    assert!(!status.success());
    assert!(
        daemon.stderr().contains("--tls-cert needs the epoll transport"),
        "{}",
        daemon.stderr()
    );
}
