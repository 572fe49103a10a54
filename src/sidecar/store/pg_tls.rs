//! TLS to PostgreSQL as libpq reads `sslmode` and `sslrootcert` in the URL.
//!
//! tokio-postgres knows only `disable|prefer|require` and no `sslrootcert`, so both are taken
//! out of the URL here and turned into its `SslMode` plus a rustls config:
//! - `disable`: plain TCP;
//! - `prefer` (libpq's default, and ours): TLS when the server offers it, else plain, the
//!   certificate not checked (as libpq, which checks only in the `verify-*` modes);
//! - `require`: TLS or no connection, the certificate not checked;
//! - `verify-ca`: TLS, the chain checked against `sslrootcert` (a PEM file), or the Mozilla
//!   roots when absent (managed databases with public CAs; libpq would read
//!   `~/.postgresql/root.crt`);
//! - `verify-full`: as `verify-ca`, and the host name (or IP) must be in the certificate.

use anyhow::{anyhow, bail, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::sync::Arc;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslModeSetting {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// The URL as tokio-postgres takes it, and what TLS it asks for.
#[derive(Debug, PartialEq)]
pub struct TlsUrl {
    pub url: String,
    pub mode: SslModeSetting,
    pub root_cert: Option<String>,
}

/// Takes `sslmode` and `sslrootcert` out of a `postgresql://` URL's query.
pub fn split_url(url: &str) -> Result<TlsUrl> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, q),
        None => (url, ""),
    };
    let mut mode = SslModeSetting::Prefer;
    let mut root_cert = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sslmode" => {
                mode = match percent_decode(value)?.as_str() {
                    "disable" => SslModeSetting::Disable,
                    // libpq's `allow` tries plain first; TLS-if-offered is as safe and simpler.
                    "allow" | "prefer" => SslModeSetting::Prefer,
                    "require" => SslModeSetting::Require,
                    "verify-ca" => SslModeSetting::VerifyCa,
                    "verify-full" => SslModeSetting::VerifyFull,
                    other => bail!(
                        "invalid database_url: sslmode={other} (expected disable, allow, prefer, require, verify-ca or verify-full)"
                    ),
                }
            }
            "sslrootcert" => root_cert = Some(percent_decode(value)?),
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok(TlsUrl {
        url,
        mode,
        root_cert,
    })
}

fn percent_decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| anyhow!("invalid database_url: bad %-escape in {s:?}"))?;
                out.push(hex);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| anyhow!("invalid database_url: {s:?} is not UTF-8"))
}

impl SslModeSetting {
    /// What tokio-postgres negotiates.
    pub fn negotiation(self) -> SslMode {
        match self {
            SslModeSetting::Disable => SslMode::Disable,
            SslModeSetting::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        }
    }
}

/// The TLS connector for these settings (unused when `disable`).
pub fn connector(tls: &TlsUrl) -> Result<MakeRustlsConnect> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS to the database")?;
    let config = match tls.mode {
        SslModeSetting::Disable | SslModeSetting::Prefer | SslModeSetting::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unchecked(provider)))
            .with_no_client_auth(),
        SslModeSetting::VerifyCa | SslModeSetting::VerifyFull => {
            let roots = Arc::new(roots(tls.root_cert.as_deref())?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .context("TLS to the database: the root certificates")?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Verified {
                    webpki,
                    check_name: tls.mode == SslModeSetting::VerifyFull,
                }))
                .with_no_client_auth()
        }
    };
    Ok(MakeRustlsConnect::new(config))
}

fn roots(root_cert: Option<&str>) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    match root_cert {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .with_context(|| format!("sslrootcert={path}: cannot read it"))?
            {
                let cert = cert.with_context(|| format!("sslrootcert={path}: not PEM"))?;
                store
                    .add(cert)
                    .with_context(|| format!("sslrootcert={path}: not a certificate"))?;
            }
            if store.is_empty() {
                bail!("sslrootcert={path}: no certificate in it");
            }
        }
        None => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(store)
}

/// `prefer`/`require`: encrypted, the certificate not checked (libpq's behaviour); the
/// handshake's signatures still are.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
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
        verify_tls13_signature(
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

/// `verify-ca`/`verify-full`: the chain checked; the name too in `verify-full`.
#[derive(Debug)]
struct Verified {
    webpki: Arc<WebPkiServerVerifier>,
    check_name: bool,
}

impl ServerCertVerifier for Verified {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            // webpki checks the name last, so a name mismatch means the chain is good.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_of_the_url() {
        let tls = split_url(
            "postgresql://u@db:5432/x?application_name=a&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(
            tls,
            TlsUrl {
                url: "postgresql://u@db:5432/x?application_name=a".into(),
                mode: SslModeSetting::VerifyFull,
                root_cert: Some("/etc/ca.pem".into()),
            }
        );
        assert_eq!(tls.mode.negotiation(), SslMode::Require);
    }

    #[test]
    fn prefer_is_the_default_and_modes_map_to_negotiation() {
        let tls = split_url("postgresql://u@db/x").unwrap();
        assert_eq!(tls.url, "postgresql://u@db/x");
        assert_eq!(tls.mode, SslModeSetting::Prefer);
        let mode = |m: &str| {
            split_url(&format!("postgresql://db/x?sslmode={m}"))
                .unwrap()
                .mode
        };
        assert_eq!(mode("disable").negotiation(), SslMode::Disable);
        assert_eq!(mode("allow").negotiation(), SslMode::Prefer);
        assert_eq!(mode("require").negotiation(), SslMode::Require);
        assert_eq!(mode("verify-ca"), SslModeSetting::VerifyCa);
    }

    #[test]
    fn unknown_sslmode_and_missing_root_file_are_clear_errors() {
        let err = split_url("postgresql://db/x?sslmode=on")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sslmode=on"), "{err}");
        let tls =
            split_url("postgresql://db/x?sslmode=verify-ca&sslrootcert=/nonexistent.pem").unwrap();
        let err = format!("{:#}", connector(&tls).err().unwrap());
        assert!(err.contains("sslrootcert=/nonexistent.pem"), "{err}");
    }
}
