//! What of a cloud-image builder determines its derived image: the image's bytes (its
//! sha256), who logs in, how it boots, and what the customising boot adds. A manifest keeps
//! it whole, so `runner reproduce` can derive the same image on another host.

use serde::{Deserialize, Serialize};

use crate::config::{CloudImage, Firmware, ImageSource};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CloudRecipe {
    /// Where the image is downloaded from (not part of the digest: a mirror serves the same
    /// bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A local image file instead (not part of the digest either).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The image as downloaded.
    pub sha256: String,
    pub ssh_user: String,
    pub firmware: Firmware,
    /// The text of the builder's bake script, run once as root in the customising boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake_script: Option<String>,
}

impl CloudRecipe {
    pub fn of(c: &CloudImage, sha256: &str) -> CloudRecipe {
        let (url, path) = match &c.source {
            ImageSource::Url { url, .. } => (Some(url.clone()), None),
            ImageSource::Path { path, .. } => (None, Some(path.display().to_string())),
        };
        CloudRecipe {
            url,
            path,
            sha256: sha256.to_owned(),
            ssh_user: c.ssh_user.clone(),
            firmware: c.firmware,
            bake_script: c.bake_script.as_ref().map(|b| b.text.clone()),
        }
    }

    /// The builder's image source again, for a rebuild from a manifest: the same URL (or
    /// file), held to the recorded sha256.
    pub fn source(&self) -> ImageSource {
        match (&self.url, &self.path) {
            (Some(url), _) => ImageSource::Url {
                url: url.clone(),
                checksum: crate::config::cloud::Checksum::Sha256(self.sha256.clone()),
            },
            (None, path) => ImageSource::Path {
                path: path.clone().unwrap_or_default().into(),
                sha256: Some(self.sha256.clone()),
            },
        }
    }

    /// Itself without where the bytes come from: what the digest covers.
    pub fn content(&self) -> CloudRecipe {
        CloudRecipe {
            url: None,
            path: None,
            ..self.clone()
        }
    }

    /// Where the image comes from, for people.
    pub fn location(&self) -> &str {
        self.url.as_deref().or(self.path.as_deref()).unwrap_or("")
    }
}
