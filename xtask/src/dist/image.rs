//! The OCI image, written without a container engine: one gzip layer holding
//! `/dropgate`, its config and manifest as content-addressed blobs, in one tar that is
//! both an OCI image layout (`skopeo`, `podman load`, registries via `skopeo copy`)
//! and a `docker save` archive (its `manifest.json` points at the same blobs), so
//! `docker load -i` takes it too.
//!
//! Nothing else is in the image: the binary is static, and it makes no TLS
//! connections of its own, so it needs no CA certificates.

use std::{
    collections::BTreeMap,
    fs,
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{ensure, Context as _, Result};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::{Arch, Artifacts, VERSION};
use crate::cmd;

/// The image's name in `docker images`.
pub const REPOSITORY: &str = "dropgate";

const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// Builds `out/dropgate-<version>-<arch>.oci.tar`.
pub fn build(arch: Arch, binary: &Path, out: &Path) -> Result<PathBuf> {
    let revision = cmd::stdout_of(
        Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(cmd::workspace_root()),
    )
    .unwrap_or_default();
    // The commit's time, not now: the same commit gives the same image digest.
    let epoch: u64 = cmd::stdout_of(
        Command::new("git")
            .args(["log", "-1", "--format=%ct"])
            .current_dir(cmd::workspace_root()),
    )
    .and_then(|t| t.parse().ok())
    .unwrap_or(0);
    let created = cmd::stdout_of(Command::new("date").args([
        "-u",
        "-d",
        &format!("@{epoch}"),
        "+%Y-%m-%dT%H:%M:%SZ",
    ]))
    .context("date failed")?;

    let layer_tar = layer(binary, epoch)?;
    let layer_gz = {
        let mut encoder = flate2::GzBuilder::new()
            .mtime(0)
            .write(Vec::new(), flate2::Compression::best());
        encoder.write_all(&layer_tar)?;
        encoder.finish()?
    };
    let tag = format!("{VERSION}-{}", arch.name);
    let labels = json!({
        "org.opencontainers.image.title": "dropgate",
        "org.opencontainers.image.version": VERSION,
        "org.opencontainers.image.revision": revision,
        "org.opencontainers.image.licenses": "Apache-2.0",
    });
    let config = serde_json::to_vec(&json!({
        "created": created,
        "architecture": arch.deb,
        "os": "linux",
        "config": {
            "Entrypoint": ["/dropgate"],
            "Cmd": ["run", "--persistence.file", "/var/lib/dropgate/metrics.db"],
            "ExposedPorts": {"9091/tcp": {}},
            "Volumes": {"/var/lib/dropgate": {}},
            "StopSignal": "SIGTERM",
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [digest(&layer_tar)]},
        "history": [{"created": created, "created_by": "cargo xtask dist"}],
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": descriptor(CONFIG_TYPE, &config),
        "layers": [descriptor(LAYER_TYPE, &layer_gz)],
        "annotations": labels,
    }))?;
    let mut manifest_entry = descriptor(MANIFEST_TYPE, &manifest);
    manifest_entry["annotations"] = json!({
        "org.opencontainers.image.ref.name": tag,
        "io.containerd.image.name": format!("{REPOSITORY}:{tag}"),
    });
    manifest_entry["platform"] = json!({"architecture": arch.deb, "os": "linux"});
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": INDEX_TYPE,
        "manifests": [manifest_entry],
    }))?;
    let docker_manifest = serde_json::to_vec(&json!([{
        "Config": blob_path(&config),
        "RepoTags": [format!("{REPOSITORY}:{tag}")],
        "Layers": [blob_path(&layer_gz)],
    }]))?;

    let mut files: BTreeMap<String, &[u8]> = BTreeMap::new();
    files.insert("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#);
    files.insert("index.json".into(), &index);
    files.insert("manifest.json".into(), &docker_manifest);
    for blob in [&layer_gz[..], &config, &manifest] {
        files.insert(blob_path(blob), blob);
    }
    let path = out.join(format!("dropgate-{VERSION}-{}.oci.tar", arch.name));
    write_archive(&path, &files, epoch)?;
    Ok(path)
}

/// The outer tar: the blob folders, then every file in name order.
fn write_archive(path: &Path, files: &BTreeMap<String, &[u8]>, epoch: u64) -> Result<()> {
    let mut archive = tar::Builder::new(Vec::new());
    for dir in ["blobs/", "blobs/sha256/"] {
        append(
            &mut archive,
            dir,
            &[],
            0o755,
            epoch,
            tar::EntryType::Directory,
        )?;
    }
    for (name, data) in files {
        append(
            &mut archive,
            name,
            data,
            0o644,
            epoch,
            tar::EntryType::Regular,
        )?;
    }
    fs::write(path, archive.into_inner()?).with_context(|| format!("writing {}", path.display()))
}

/// The one layer: `/dropgate`, root-owned, executable.
fn layer(binary: &Path, epoch: u64) -> Result<Vec<u8>> {
    let data = fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    let mut layer = tar::Builder::new(Vec::new());
    append(
        &mut layer,
        "dropgate",
        &data,
        0o755,
        epoch,
        tar::EntryType::Regular,
    )?;
    Ok(layer.into_inner()?)
}

fn append(
    archive: &mut tar::Builder<Vec<u8>>,
    name: &str,
    data: &[u8],
    mode: u32,
    mtime: u64,
    kind: tar::EntryType,
) -> Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_size(data.len() as u64);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(mtime);
    archive
        .append_data(&mut header, name, data)
        .with_context(|| format!("adding {name} to the image"))
}

fn digest(data: &[u8]) -> String {
    use std::fmt::Write as _;
    Sha256::digest(data)
        .iter()
        .fold(String::from("sha256:"), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

fn blob_path(data: &[u8]) -> String {
    format!("blobs/sha256/{}", &digest(data)["sha256:".len()..])
}

fn descriptor(media_type: &str, data: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": digest(data), "size": data.len()})
}

/// Reads the archive back: every blob matches its digest, the layer holds exactly the
/// binary, and `skopeo` (an independent reader) sees the same image in both formats.
pub fn check(a: &Artifacts) -> Result<()> {
    let mut blobs = BTreeMap::new();
    let mut archive = tar::Archive::new(fs::File::open(&a.image)?);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        if let Some(hex) = name.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
            ensure!(
                digest(&data) == format!("sha256:{hex}"),
                "{}: blob {hex} does not match its digest",
                a.image.display()
            );
        }
        blobs.insert(name, data);
    }
    let index: Value = serde_json::from_slice(blobs.get("index.json").context("no index.json")?)?;
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .context("index.json names no manifest")?;
    let manifest: Value = serde_json::from_slice(
        blobs
            .get(&format!("blobs/sha256/{}", &manifest_digest[7..]))
            .context("the manifest blob is missing")?,
    )?;
    let layers = manifest["layers"].as_array().context("no layers")?;
    ensure!(layers.len() == 1, "one layer, not {}", layers.len());
    let layer_gz = blobs
        .get(&format!(
            "blobs/sha256/{}",
            &layers[0]["digest"].as_str().context("layer digest")?[7..]
        ))
        .context("the layer blob is missing")?;
    let mut layer = tar::Archive::new(flate2::read::GzDecoder::new(&layer_gz[..]));
    let mut names = Vec::new();
    for entry in layer.entries()? {
        let mut entry = entry?;
        names.push(entry.path()?.to_string_lossy().into_owned());
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        ensure!(
            data == fs::read(&a.binary)?,
            "the image's /dropgate is not {}",
            a.binary.display()
        );
    }
    ensure!(
        names == ["dropgate"],
        "the layer holds {names:?}, not just dropgate"
    );
    for transport in ["oci-archive", "docker-archive"] {
        let seen = cmd::stdout_of(Command::new("skopeo").args([
            "inspect",
            "--config",
            &format!("{transport}:{}", a.image.display()),
        ]))
        .with_context(|| format!("skopeo cannot read {} as {transport}", a.image.display()))?;
        let config: Value = serde_json::from_str(&seen)?;
        ensure!(
            config["architecture"] == a.arch.deb
                && config["config"]["Entrypoint"][0] == "/dropgate",
            "skopeo reads {} as {transport} differently: {seen}",
            a.image.display()
        );
    }
    Ok(())
}
