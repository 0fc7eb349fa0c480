//! Certificates made at test time with rcgen: a throwaway CA and leaf
//! certificates it signs, as PEM text.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A certificate authority that lives for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (what clients trust).
    pub cert_pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("CA certificate");
        TestCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf certificate for `names` (DNS names or IP addresses) and its
    /// private key, both PEM.
    pub fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().expect("leaf key");
        let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, "honeycell test");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// A client certificate (extended key usage clientAuth) and its key.
    pub fn client(&self, name: &str) -> (String, String) {
        let key = KeyPair::generate().expect("client key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("client certificate");
        (cert.pem(), key.serialize_pem())
    }
}

/// What a test client needs to reach a server over TLS: the CA it trusts
/// and, for mutual TLS, its own certificate and key (PEM).
#[derive(Clone, Debug)]
pub struct TlsClient {
    pub ca_pem: String,
    pub identity: Option<(String, String)>,
}

impl TlsClient {
    /// An HTTPS client trusting only `ca_pem`.
    pub fn reqwest(&self) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).expect("CA PEM"),
            );
        if let Some((cert, key)) = &self.identity {
            builder = builder.identity(
                reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes())
                    .expect("client identity PEM"),
            );
        }
        builder.build().expect("reqwest client with TLS")
    }

    /// A gRPC channel to `localhost:port` over TLS.
    pub async fn channel(
        &self,
        port: u16,
    ) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name("localhost");
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        tonic::transport::Channel::from_shared(format!("https://127.0.0.1:{port}"))
            .expect("a valid URI")
            .tls_config(tls)?
            .connect_timeout(std::time::Duration::from_secs(10))
            .connect()
            .await
    }
}
