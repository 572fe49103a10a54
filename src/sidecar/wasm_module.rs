//! The sidecar serves its own filter module, so gateways fetch it without a registry: Istio's
//! agent downloads `MODULE_PATH` and checks it against the sha256 the manifests pin
//! (`tollgate render --format istio` reads the same file).

use anyhow::{Context, Result};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;

/// Where the sidecar serves the module.
pub const MODULE_PATH: &str = "/tollgate/tollgate.wasm";
/// Where it serves the module's sha256 (hex, one line).
pub const MODULE_SHA256_PATH: &str = "/tollgate/tollgate.wasm.sha256";

/// The module's bytes and their sha256 (hex).
#[derive(Clone)]
pub struct WasmModule {
    pub bytes: Arc<Vec<u8>>,
    pub sha256: String,
}

impl WasmModule {
    pub fn read(path: &Path) -> Result<WasmModule> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read the filter module {}", path.display()))?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        Ok(WasmModule {
            bytes: Arc::new(bytes),
            sha256,
        })
    }

    /// `GET MODULE_PATH` and `GET MODULE_SHA256_PATH`.
    pub fn router(&self) -> Router {
        let module = self.clone();
        let digest = self.sha256.clone();
        Router::new()
            .route(
                MODULE_PATH,
                get(move || {
                    let module = module.clone();
                    async move {
                        (
                            [
                                (header::CONTENT_TYPE, "application/wasm".to_string()),
                                (header::ETAG, format!("\"{}\"", module.sha256)),
                            ],
                            module.bytes.as_ref().clone(),
                        )
                            .into_response()
                    }
                }),
            )
            .route(
                MODULE_SHA256_PATH,
                get(move || {
                    let digest = digest.clone();
                    async move { format!("{digest}\n") }
                }),
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_the_module_and_its_digest() {
        let dir = std::env::temp_dir().join(format!("tollgate-wasm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.wasm");
        std::fs::write(&path, b"\0asm\x01\0\0\0").unwrap();
        let module = WasmModule::read(&path).unwrap();
        assert_eq!(
            module.sha256,
            hex::encode(Sha256::digest(b"\0asm\x01\0\0\0"))
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let router = module.router();
        rt.spawn(async move { axum::serve(listener, router).await });
        let base = format!("http://{addr}");
        let (body, digest) = rt.block_on(async {
            tokio::task::spawn_blocking(move || {
                let mut body = Vec::new();
                std::io::Read::read_to_end(
                    &mut ureq::get(&format!("{base}{MODULE_PATH}"))
                        .call()
                        .unwrap()
                        .into_reader(),
                    &mut body,
                )
                .unwrap();
                let digest = ureq::get(&format!("{base}{MODULE_SHA256_PATH}"))
                    .call()
                    .unwrap()
                    .into_string()
                    .unwrap();
                (body, digest)
            })
            .await
            .unwrap()
        });
        assert_eq!(body, b"\0asm\x01\0\0\0");
        assert_eq!(digest.trim(), module.sha256);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
