//! Front-door test support: self-signed certificates (rcgen), a TLS client
//! that accepts any certificate and reports the one served, HTTP/2 clients,
//! an echo upstream, and the router served in-process with a routing table
//! the test can swap (as a reload does).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use polyhost::router::{Listeners, MountTable, RoutingTable, SharedTable, SiteLogs, SiteRoute};
use polyhost::upstream::{
    full_body, RequestBody, RequestContext, ResponseBody, Upstream, UpstreamError,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

use super::{Resp, TestConfig};

/// A self-signed certificate and its key, as PEM, and the certificate's DER.
pub struct Cert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

pub fn self_signed(names: &[&str]) -> Cert {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let c = rcgen::generate_simple_self_signed(names).unwrap();
    Cert {
        cert_pem: c.cert.pem(),
        key_pem: c.signing_key.serialize_pem(),
        der: c.cert.der().to_vec(),
    }
}

impl TestConfig {
    /// Writes `certs/<name>.pem` and `certs/<name>.key`.
    pub fn write_cert(&self, name: &str, cert: &Cert) {
        self.write(&format!("certs/{name}.pem"), &cert.cert_pem);
        self.write(&format!("certs/{name}.key"), &cert.key_pem);
    }

    /// A static site with `[tls]` using `cert`; `extra` goes before the
    /// `[tls]` table, `tls_extra` into it.
    pub fn tls_site(&self, name: &str, hosts: &[&str], extra: &str, tls_extra: &str, cert: &Cert) {
        self.write_cert(name, cert);
        self.static_site(
            name,
            hosts,
            &format!(
                "{extra}\n[tls]\ncert = \"certs/{name}.pem\"\nkey = \"certs/{name}.key\"\n{tls_extra}"
            ),
        );
    }

    /// Appends to `polyhost.toml`.
    pub fn main_extra(&self, extra: &str) {
        let mut main = std::fs::read_to_string(self.main()).unwrap();
        main.push_str(extra);
        main.push('\n');
        std::fs::write(self.main(), main).unwrap();
    }
}

/// Accepts any server certificate (the tests compare it byte for byte).
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS client configuration that accepts any certificate, offering `alpn`.
pub fn tls_client_config(alpn: &[&str]) -> Arc<rustls::ClientConfig> {
    let provider = polyhost::config::crypto_provider();
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// A TLS connection to `addr` naming `sni`, offering `alpn`.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    alpn: &[&str],
) -> std::io::Result<TlsStream<TcpStream>> {
    let connector = tokio_rustls::TlsConnector::from(tls_client_config(alpn));
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    connector.connect(name, tcp).await
}

/// The end-entity certificate the server presented, DER.
pub fn served_cert(s: &TlsStream<TcpStream>) -> Vec<u8> {
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// An HTTP/2 client connection over any stream; clones share the connection.
#[derive(Clone)]
pub struct H2 {
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
}

impl H2 {
    pub async fn handshake<S>(stream: S) -> H2
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        H2 { sender }
    }

    pub async fn send(&mut self, req: http::Request<Full<Bytes>>) -> Resp {
        self.sender.ready().await.unwrap();
        let resp = self.sender.send_request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Resp {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    }

    /// Like [`H2::handshake`], with the client pinging every `every` even when idle.
    pub async fn handshake_pinging<S>(stream: S, every: std::time::Duration) -> H2
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .timer(hyper_util::rt::TokioTimer::new())
                .keep_alive_interval(every)
                .keep_alive_while_idle(true)
                .handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        H2 { sender }
    }

    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// GET `url` (absolute: the authority routes it).
    pub async fn get(&mut self, url: &str) -> Resp {
        let req = http::Request::builder()
            .uri(url)
            .body(Full::new(Bytes::new()))
            .unwrap();
        self.send(req).await
    }
}

/// An HTTP/1.1 client over any stream (e.g. TLS).
pub async fn h1_over<S>(stream: S) -> hyper::client::conn::http1::SendRequest<Full<Bytes>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

pub async fn send_h1(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    req: http::Request<Full<Bytes>>,
) -> Resp {
    sender.ready().await.unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// An upstream that answers with what it received: one `key: value` line
/// per fact and per request header, then `body-bytes: N`. It reads the
/// whole body first; a body error becomes `BadRequest` (the router decides
/// the status). Response headers in `respond_with` are added to every answer.
#[derive(Default)]
pub struct Echo {
    pub respond_with: Vec<(&'static str, &'static str)>,
    /// Requests in flight now, and the most seen at once.
    pub in_flight: std::sync::atomic::AtomicUsize,
    pub max_in_flight: std::sync::atomic::AtomicUsize,
    /// Holds requests to `/hold` until notified.
    pub release: tokio::sync::Notify,
}

impl Upstream for Echo {
    fn kind(&self) -> &'static str {
        "echo"
    }

    fn handle<'a>(
        &'a self,
        req: http::Request<RequestBody>,
        ctx: &'a RequestContext,
    ) -> BoxFuture<'a, Result<http::Response<ResponseBody>, UpstreamError>> {
        use std::sync::atomic::Ordering::SeqCst;
        Box::pin(async move {
            let now = self.in_flight.fetch_add(1, SeqCst) + 1;
            self.max_in_flight.fetch_max(now, SeqCst);
            if req.uri().path() == "/hold" {
                self.release.notified().await;
            }
            self.in_flight.fetch_sub(1, SeqCst);
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| UpstreamError::BadRequest(e.to_string()))?
                .to_bytes();
            let mut out = format!(
                "client: {}\nscheme: {}\nhost: {}\nversion: {:?}\n",
                ctx.client.ip(),
                ctx.scheme.as_str(),
                ctx.host,
                parts.version
            );
            for (k, v) in &parts.headers {
                out.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
            }
            out.push_str(&format!("body-bytes: {}\n", body.len()));
            let mut resp = http::Response::builder().status(200);
            for (k, v) in &self.respond_with {
                resp = resp.header(*k, *v);
            }
            Ok(resp.body(full_body(out)).unwrap())
        })
    }
}

/// The router alone, in process: plain and TLS listeners on port 0, the
/// routing table built here (static sites as `serve` builds them, some
/// sites' root mounted on a test upstream) and swappable.
pub struct Front {
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub table: SharedTable,
    upstreams: Vec<(String, Arc<dyn Upstream>)>,
    supervisor: polyhost::supervisor::Supervisor,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Front {
    pub async fn start(cfg: &TestConfig, upstreams: Vec<(&str, Arc<dyn Upstream>)>) -> Front {
        let config = cfg.load();
        std::fs::create_dir_all(&config.server.log_dir).unwrap();
        std::fs::create_dir_all(&config.server.state_dir).unwrap();
        let supervisor = polyhost::supervisor::Supervisor::new(&config.server);
        let upstreams: Vec<(String, Arc<dyn Upstream>)> = upstreams
            .into_iter()
            .map(|(s, u)| (s.to_owned(), u))
            .collect();
        let table = Arc::new(arc_swap::ArcSwap::from_pointee(Self::build(
            &config,
            &upstreams,
            &supervisor,
        )));
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let https = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (http_addr, https_addr) = (http.local_addr().unwrap(), https.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let serve = polyhost::router::server::serve(
            Listeners {
                http: vec![http],
                https: vec![https],
            },
            table.clone(),
            shutdown.clone(),
            config.server.front.clone(),
            std::time::Duration::from_secs(5),
        );
        let task = tokio::spawn(async move { serve.await.expect("router threads start") });
        Front {
            http: http_addr,
            https: https_addr,
            table,
            upstreams,
            supervisor,
            shutdown,
            task,
        }
    }

    fn build(
        config: &polyhost::config::Config,
        upstreams: &[(String, Arc<dyn Upstream>)],
        supervisor: &polyhost::supervisor::Supervisor,
    ) -> RoutingTable {
        let mut routes = Vec::new();
        for site in config.sites.values() {
            let up = upstreams.iter().find(|(s, _)| s == site.name.as_str());
            let route = match up {
                Some((_, up)) => Arc::new(SiteRoute {
                    config: site.clone(),
                    mounts: MountTable::new(vec![(String::new(), up.clone())]),
                    logs: Arc::new(SiteLogs::open(&config.server.log_dir, site.name.as_str())),
                    stats: Default::default(),
                    uid: None,
                }),
                None => {
                    // Static sites, as `serve` builds them (no processes).
                    let logs = polyhost::sites::open_logs(site, &config.server.log_dir);
                    let stats: Arc<polyhost::router::SiteStats> = Default::default();
                    let runtimes =
                        polyhost::sites::build_runtimes(site, supervisor, 1, &stats).unwrap();
                    Arc::new(polyhost::sites::build_route(site, &runtimes, logs, stats).unwrap())
                }
            };
            routes.push(route);
        }
        RoutingTable::new(routes)
    }

    /// Reads the configuration again and swaps in a new routing table.
    pub fn reload(&self, cfg: &TestConfig) {
        let config = cfg.load();
        self.table.store(Arc::new(Self::build(
            &config,
            &self.upstreams,
            &self.supervisor,
        )));
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }
}
