//! The filter module as an OCI image layout, for users who push it to a registry: Istio's
//! "compat" Wasm image (one gzipped tar layer holding `plugin.wasm`), which istio-agent pulls for
//! an `oci://` URL. The layout is reproducible (fixed timestamps and owners), so the manifest
//! digest, which Istio checks for `oci://` URLs, follows from the module alone.

use anyhow::{anyhow, Context, Result};
use flate2::{Compression, GzBuilder};
use oci_spec::image::{
    Descriptor, DescriptorBuilder, Digest, ImageConfigurationBuilder, ImageIndexBuilder,
    ImageManifestBuilder, MediaType, OciLayoutBuilder, RootFsBuilder, SCHEMA_VERSION,
};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

/// The file Istio looks for in the layer.
const MODULE_FILE: &str = "plugin.wasm";

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn digest(hex: &str) -> Result<Digest> {
    Digest::from_str(&format!("sha256:{hex}")).map_err(|e| anyhow!("digest: {e}"))
}

/// A blob and its descriptor.
struct Blob {
    bytes: Vec<u8>,
    descriptor: Descriptor,
}

fn blob(media_type: MediaType, bytes: Vec<u8>) -> Result<Blob> {
    let descriptor = DescriptorBuilder::default()
        .media_type(media_type)
        .digest(digest(&sha256_hex(&bytes))?)
        .size(u64::try_from(bytes.len())?)
        .build()?;
    Ok(Blob { bytes, descriptor })
}

/// The image's blobs: layer, config, manifest (in that order), and the manifest's sha256.
fn image(wasm: &[u8]) -> Result<(Vec<Blob>, String)> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(u64::try_from(wasm.len())?);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_cksum();
    tar.append_data(&mut header, MODULE_FILE, wasm)?;
    let tar = tar.into_inner()?;
    let diff_id = sha256_hex(&tar);
    let mut gz = GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::best());
    std::io::Write::write_all(&mut gz, &tar)?;
    let layer = blob(MediaType::ImageLayerGzip, gz.finish()?)?;

    let config = ImageConfigurationBuilder::default()
        .architecture("wasm")
        .os("wasip1")
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(vec![format!("sha256:{diff_id}")])
                .build()?,
        )
        .build()?;
    let config = blob(MediaType::ImageConfig, serde_json::to_vec(&config)?)?;

    let manifest = ImageManifestBuilder::default()
        .schema_version(SCHEMA_VERSION)
        .media_type(MediaType::ImageManifest)
        .config(config.descriptor.clone())
        .layers(vec![layer.descriptor.clone()])
        .build()?;
    let manifest = blob(MediaType::ImageManifest, serde_json::to_vec(&manifest)?)?;
    let manifest_sha = sha256_hex(&manifest.bytes);
    Ok((vec![layer, config, manifest], manifest_sha))
}

/// sha256 (hex) of the image manifest for `wasm`: what Istio checks for an `oci://` URL.
pub fn manifest_sha256(wasm: &[u8]) -> Result<String> {
    Ok(image(wasm)?.1)
}

/// Writes the OCI image layout of `wasm` into `dir` (created if needed), tagged `tag`.
/// Returns the manifest's sha256.
pub fn write_layout(wasm: &[u8], dir: &Path, tag: &str) -> Result<String> {
    let (blobs, manifest_sha) = image(wasm)?;
    let blob_dir = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blob_dir)
        .with_context(|| format!("cannot create {}", blob_dir.display()))?;
    for b in &blobs {
        std::fs::write(blob_dir.join(b.descriptor.digest().digest()), &b.bytes)?;
    }
    let mut manifest = blobs
        .last()
        .map(|b| b.descriptor.clone())
        .ok_or_else(|| anyhow!("no manifest"))?;
    manifest.set_annotations(Some(HashMap::from([(
        "org.opencontainers.image.ref.name".to_string(),
        tag.to_string(),
    )])));
    let index = ImageIndexBuilder::default()
        .schema_version(SCHEMA_VERSION)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![manifest])
        .build()?;
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    let layout = OciLayoutBuilder::default()
        .image_layout_version("1.0.0")
        .build()?;
    std::fs::write(dir.join("oci-layout"), serde_json::to_vec(&layout)?)?;
    Ok(manifest_sha)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;
    use oci_spec::image::{ImageIndex, ImageManifest};

    #[test]
    fn layout_holds_the_module_and_is_reproducible() {
        let dir = std::env::temp_dir().join(format!("tollgate-oci-{}", std::process::id()));
        let wasm = b"\0asm\x01\0\0\0module".to_vec();
        let sha = write_layout(&wasm, &dir, "0.1.0").unwrap();
        assert_eq!(sha, manifest_sha256(&wasm).unwrap(), "reproducible");
        assert_ne!(sha, manifest_sha256(b"\0asm\x01\0\0\0other").unwrap());

        let index = ImageIndex::from_file(dir.join("index.json")).unwrap();
        let entry = &index.manifests()[0];
        assert_eq!(entry.digest().digest(), sha);
        assert_eq!(
            entry.annotations().as_ref().unwrap()["org.opencontainers.image.ref.name"],
            "0.1.0"
        );
        let blobs = dir.join("blobs/sha256");
        let manifest = ImageManifest::from_file(blobs.join(&sha)).unwrap();
        let layer = &manifest.layers()[0];
        assert_eq!(layer.media_type(), &MediaType::ImageLayerGzip);
        let bytes = std::fs::read(blobs.join(layer.digest().digest())).unwrap();
        assert_eq!(sha256_hex(&bytes), layer.digest().digest());
        let mut archive = tar::Archive::new(GzDecoder::new(&bytes[..]));
        let mut entries = archive.entries().unwrap();
        let mut entry = entries.next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap().to_str(), Some(MODULE_FILE));
        let mut content = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut content).unwrap();
        assert_eq!(content, wasm);
        assert!(dir.join("oci-layout").is_file());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
