//! `firmware = "auto"`: which firmware a downloaded cloud image boots with, read from its
//! first sectors. A UEFI-only image (an EFI system partition, and a protective MBR with no
//! boot code) needs OVMF; anything with BIOS boot code — hybrid images such as Debian's and
//! Ubuntu's, which boot either way — and anything else boots with SeaBIOS, QEMU's own.
//!
//! The image is a download, so hostile: only its first [`HEAD`] bytes are read, every offset
//! in them is bounds-checked, and a partition table pointing elsewhere is simply not looked
//! at (it cannot make runner read more).

use std::path::Path;

use tokio::process::Command;

use crate::config::{Arch, Firmware};
use crate::error::{Error, IoContext, Result};

const SECTOR: usize = 512;
/// The MBR, the GPT header and 32 sectors of partition entries (128 of 128 bytes).
const HEAD: usize = 34 * SECTOR;
/// The EFI system partition's type GUID (C12A7328-F81F-11D2-BA4B-00A0C93EC93B) as GPT
/// stores it: the first three fields little-endian.
const ESP_GUID: [u8; 16] = [
    0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b,
];
/// The MBR partition type of an EFI system partition.
const ESP_MBR_TYPE: u8 = 0xef;

/// A firmware chosen, and why, for logs and errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub firmware: Firmware,
    pub why: &'static str,
}

/// The firmware `declared` means for the image file `path` (`format`: qcow2 or raw).
pub async fn resolve(declared: Firmware, arch: Arch, path: &Path, format: &str) -> Result<Choice> {
    match (declared, arch) {
        (Firmware::Auto, Arch::Arm64) => Ok(Choice {
            firmware: Firmware::Uefi,
            why: "aarch64 machines boot with UEFI",
        }),
        (Firmware::Auto, Arch::Amd64) => Ok(classify(&head(path, format).await?)),
        (f, _) => Ok(Choice {
            firmware: f,
            why: "as the builder declares",
        }),
    }
}

/// What a machine whose firmware found nothing to boot says: which firmware that was, how it
/// was chosen, and what to set instead.
pub fn no_bootloader(
    declared: Firmware,
    booted: Firmware,
    arch: Arch,
    choice: Option<Choice>,
) -> String {
    let (name, other) = match (booted, arch) {
        (Firmware::Uefi, Arch::Amd64) => ("UEFI firmware (OVMF)", Some(Firmware::Bios)),
        (Firmware::Uefi, Arch::Arm64) => ("UEFI firmware (QEMU_EFI)", None),
        _ => ("BIOS firmware (SeaBIOS)", Some(Firmware::Uefi)),
    };
    let how = match (declared, choice) {
        (Firmware::Auto, Some(c)) => {
            format!("firmware = \"auto\" chose {}: {}", booted.as_str(), c.why)
        }
        (Firmware::Auto, None) => format!("firmware = \"auto\" chose {}", booted.as_str()),
        (d, _) => format!("the builder sets firmware = \"{}\"", d.as_str()),
    };
    let advice = match other {
        Some(o) => format!(
            "if the image boots with {} firmware, set firmware = \"{}\" in its builder; \
             a disk with no bootloader at all boots with neither",
            o.as_str().to_uppercase(),
            o.as_str()
        ),
        None => "a disk with no UEFI bootloader cannot boot on aarch64".into(),
    };
    format!("the {name} found nothing to boot on its disk ({how}); {advice}")
}

/// What the first sectors of a disk say it boots with.
pub fn classify(head: &[u8]) -> Choice {
    let boot_code = head.get(..440).is_some_and(|c| c.iter().any(|&b| b != 0));
    let esp = gpt_has_esp(head) || mbr_has_esp(head);
    match (esp, boot_code) {
        (true, false) => Choice {
            firmware: Firmware::Uefi,
            why: "it has an EFI system partition and no BIOS boot code",
        },
        (true, true) => Choice {
            firmware: Firmware::Bios,
            why: "it has BIOS boot code beside its EFI system partition (a hybrid image)",
        },
        (false, true) => Choice {
            firmware: Firmware::Bios,
            why: "it has BIOS boot code and no EFI system partition",
        },
        (false, false) => Choice {
            firmware: Firmware::Bios,
            why: "it has neither an EFI system partition nor BIOS boot code",
        },
    }
}

fn gpt_has_esp(head: &[u8]) -> bool {
    let Some(header) = head.get(SECTOR..2 * SECTOR) else {
        return false;
    };
    if header.get(..8) != Some(b"EFI PART".as_slice()) {
        return false;
    }
    let u32_at = |o: usize| {
        header
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
    };
    let lba = header
        .get(72..80)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    let (Some(lba), Some(count), Some(size)) = (lba, u32_at(80), u32_at(84)) else {
        return false;
    };
    // Entries are at least 128 bytes; only those inside the sectors read are looked at.
    let Some(start) = usize::try_from(lba)
        .ok()
        .and_then(|l| l.checked_mul(SECTOR))
    else {
        return false;
    };
    if size < 128 {
        return false;
    }
    (0..count.min(HEAD / 128))
        .filter_map(|i| {
            let at = start.checked_add(i.checked_mul(size)?)?;
            head.get(at..at.checked_add(16)?)
        })
        .any(|guid| guid == ESP_GUID)
}

fn mbr_has_esp(head: &[u8]) -> bool {
    if head.get(510..512) != Some([0x55, 0xaa].as_slice()) {
        return false;
    }
    (0..4).any(|i| head.get(446 + 16 * i + 4) == Some(&ESP_MBR_TYPE))
}

/// The image's first [`HEAD`] bytes as the guest would see them (a qcow2 read through
/// `qemu-img`, which knows its compressed clusters).
async fn head(path: &Path, format: &str) -> Result<Vec<u8>> {
    if format == "raw" {
        use std::io::Read;
        let mut buf = Vec::with_capacity(HEAD);
        std::fs::File::open(path)
            .ctx(|| format!("cannot read `{}`", path.display()))?
            .take(HEAD as u64)
            .read_to_end(&mut buf)
            .ctx(|| format!("cannot read `{}`", path.display()))?;
        return Ok(buf);
    }
    let scratch = tempfile::NamedTempFile::new().ctx(|| "cannot create a temporary file")?;
    let out = Command::new("qemu-img")
        .args(["dd", "-f", format, "-O", "raw", "bs=512", "count=34"])
        .arg(format!("if={}", path.display()))
        .arg(format!("of={}", scratch.path().display()))
        .kill_on_drop(true)
        .output()
        .await
        .ctx(|| "cannot run `qemu-img dd` (is qemu-utils installed?)")?;
    if !out.status.success() {
        return Err(Error::BadFile {
            path: path.to_owned(),
            problem: format!(
                "cannot read its partition table: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    let mut buf = std::fs::read(scratch.path()).ctx(|| "cannot read the image's first sectors")?;
    buf.truncate(HEAD);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk head: optional boot code, a protective or real MBR entry, a GPT whose entry
    /// `esp_at` (if any) is an EFI system partition.
    fn disk(boot_code: bool, mbr_type: u8, esp_at: Option<usize>) -> Vec<u8> {
        let mut d = vec![0u8; HEAD];
        if boot_code {
            d[..3].copy_from_slice(&[0xeb, 0x63, 0x90]);
        }
        d[446 + 4] = mbr_type;
        d[510..512].copy_from_slice(&[0x55, 0xaa]);
        if mbr_type == 0xee {
            let h = &mut d[SECTOR..2 * SECTOR];
            h[..8].copy_from_slice(b"EFI PART");
            h[72..80].copy_from_slice(&2u64.to_le_bytes());
            h[80..84].copy_from_slice(&128u32.to_le_bytes());
            h[84..88].copy_from_slice(&128u32.to_le_bytes());
            if let Some(i) = esp_at {
                let at = 2 * SECTOR + i * 128;
                d[at..at + 16].copy_from_slice(&ESP_GUID);
            }
        }
        d
    }

    #[test]
    fn an_esp_without_boot_code_is_uefi_and_anything_with_boot_code_is_bios() {
        let uefi = classify(&disk(false, 0xee, Some(0)));
        assert_eq!(uefi.firmware, Firmware::Uefi);
        // The ESP is found wherever it is in the table (Debian's images list it 15th).
        assert_eq!(
            classify(&disk(false, 0xee, Some(14))).firmware,
            Firmware::Uefi
        );
        let hybrid = classify(&disk(true, 0xee, Some(14)));
        assert_eq!(hybrid.firmware, Firmware::Bios);
        assert!(hybrid.why.contains("hybrid"), "{}", hybrid.why);
        assert_eq!(classify(&disk(true, 0x83, None)).firmware, Firmware::Bios);
        // An MBR disk whose partition is an ESP, no boot code.
        assert_eq!(classify(&disk(false, 0xef, None)).firmware, Firmware::Uefi);
        let blank = classify(&[0u8; HEAD]);
        assert_eq!(blank.firmware, Firmware::Bios);
        assert!(blank.why.contains("neither"), "{}", blank.why);
    }

    #[test]
    fn a_hostile_partition_table_cannot_make_runner_read_past_what_it_read() {
        let mut d = disk(false, 0xee, None);
        // Entries claimed far away, of absurd size and number, and a head cut short.
        d[SECTOR + 72..SECTOR + 80].copy_from_slice(&u64::MAX.to_le_bytes());
        d[SECTOR + 80..SECTOR + 84].copy_from_slice(&u32::MAX.to_le_bytes());
        d[SECTOR + 84..SECTOR + 88].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(classify(&d).firmware, Firmware::Bios);
        let mut near = disk(false, 0xee, Some(0));
        near[SECTOR + 84..SECTOR + 88].copy_from_slice(&7u32.to_le_bytes());
        assert_eq!(
            classify(&near).firmware,
            Firmware::Bios,
            "entries under 128 bytes"
        );
        for cut in [0, 100, 511, 600, 1100] {
            let _ = classify(&disk(false, 0xee, Some(0))[..cut]);
        }
    }
}
