//! What the workspace holds right now, read from `cargo metadata`: stages run
//! only for packages that exist, so the pipeline grows with the workspace.

use std::path::{Path, PathBuf};

use crate::error::XtaskError;
use crate::exec;
use crate::json::Json;

/// One workspace member.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Member {
    /// The package name.
    pub(crate) name: String,
    /// The directory holding its Cargo.toml.
    pub(crate) dir: PathBuf,
}

/// The facts about the workspace that xtask's stages depend on.
#[derive(Debug, Clone)]
pub(crate) struct Workspace {
    /// The directory of the root Cargo.toml.
    pub(crate) root: PathBuf,
    /// Cargo's target directory, with `CARGO_TARGET_DIR` and config applied.
    pub(crate) target_dir: PathBuf,
    /// The workspace members.
    pub(crate) members: Vec<Member>,
}

impl Workspace {
    /// Asks cargo about the workspace this xtask belongs to.
    pub(crate) fn load() -> Result<Workspace, XtaskError> {
        // Cargo sets the variable when it runs xtask; the compiled-in path
        // is the checkout a cached binary was built in, which may be gone.
        let here = std::env::var_os("CARGO_MANIFEST_DIR")
            .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
        let manifest = here
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join("Cargo.toml");
        let mut command = exec::cargo();
        command
            .args([
                "metadata",
                "--format-version",
                "1",
                "--no-deps",
                "--manifest-path",
            ])
            .arg(&manifest);
        let output = exec::capture(&mut command)?;
        if !output.status.success() {
            return Err(XtaskError::Other(format!(
                "`{}` failed:\n{}",
                exec::render(&command),
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        let text = String::from_utf8_lossy(&output.stdout);
        Workspace::from_metadata(&text)
            .map_err(|why| XtaskError::Other(format!("cannot read cargo metadata: {why}")))
    }

    /// Reads the parts we use out of `cargo metadata --format-version 1` output.
    pub(crate) fn from_metadata(text: &str) -> Result<Workspace, String> {
        let json = Json::parse(text)?;
        let path = |key: &str| {
            json.get(key)
                .and_then(Json::as_str)
                .map(PathBuf::from)
                .ok_or_else(|| format!("no `{key}`"))
        };
        let root = path("workspace_root")?;
        let target_dir = path("target_directory")?;
        let member_ids: Vec<&str> = json
            .get("workspace_members")
            .and_then(Json::as_array)
            .ok_or("no `workspace_members`")?
            .iter()
            .filter_map(Json::as_str)
            .collect();
        let packages = json
            .get("packages")
            .and_then(Json::as_array)
            .ok_or("no `packages`")?;
        let mut members = Vec::new();
        for package in packages {
            let field = |key: &str| package.get(key).and_then(Json::as_str);
            let (Some(id), Some(name), Some(manifest)) =
                (field("id"), field("name"), field("manifest_path"))
            else {
                return Err("a package without id, name or manifest_path".to_owned());
            };
            if member_ids.contains(&id) {
                let dir = Path::new(manifest)
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default();
                members.push(Member {
                    name: name.to_owned(),
                    dir,
                });
            }
        }
        Ok(Workspace {
            root,
            target_dir,
            members,
        })
    }

    /// Whether a package of this name is a workspace member.
    pub(crate) fn has_package(&self, name: &str) -> bool {
        self.members.iter().any(|member| member.name == name)
    }

    /// Whether the member living at `relative_dir` (from the root) exists.
    pub(crate) fn has_member_at(&self, relative_dir: &str) -> bool {
        let dir = self.root.join(relative_dir);
        self.members.iter().any(|member| member.dir == dir)
    }

    /// Where xtask keeps the tools it installs.
    pub(crate) fn tools_dir(&self) -> PathBuf {
        self.target_dir.join("tools")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METADATA: &str = r#"{
        "packages": [
            {"name": "slipstream-protocol", "id": "path+file:///w/crates/protocol#slipstream-protocol@0.1.0",
             "manifest_path": "/w/crates/protocol/Cargo.toml", "targets": [{"name": "other"}]},
            {"name": "helper", "id": "path+file:///elsewhere/helper#0.1.0",
             "manifest_path": "/elsewhere/helper/Cargo.toml"},
            {"name": "xtask", "id": "path+file:///w/xtask#0.1.0",
             "manifest_path": "/w/xtask/Cargo.toml"}
        ],
        "workspace_members": ["path+file:///w/crates/protocol#slipstream-protocol@0.1.0",
                              "path+file:///w/xtask#0.1.0"],
        "target_directory": "/cache/target",
        "workspace_root": "/w"
    }"#;

    #[test]
    fn only_listed_workspace_members_count() {
        let workspace = Workspace::from_metadata(METADATA).unwrap();
        assert!(workspace.has_package("slipstream-protocol"));
        assert!(workspace.has_package("xtask"));
        assert!(!workspace.has_package("helper"));
        assert!(!workspace.has_package("slipstream-it"));
        assert!(workspace.has_member_at("crates/protocol"));
        assert!(!workspace.has_member_at("crates/rocksdb"));
    }

    #[test]
    fn tools_live_in_the_configured_target_dir() {
        let workspace = Workspace::from_metadata(METADATA).unwrap();
        assert_eq!(workspace.tools_dir(), PathBuf::from("/cache/target/tools"));
    }

    #[test]
    fn metadata_without_members_is_an_error() {
        assert!(
            Workspace::from_metadata(r#"{"workspace_root":"/w","target_directory":"/t"}"#).is_err()
        );
    }
}
