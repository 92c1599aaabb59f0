//! CPU architectures a bundle can target, and how to recognise them in an ELF header.

use std::fmt;
use std::str::FromStr;

/// ELF `e_machine` for x86-64.
pub const EM_X86_64: u16 = 62;
/// ELF `e_machine` for AArch64.
pub const EM_AARCH64: u16 = 183;
/// The four bytes every ELF file starts with.
pub const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
/// `e_ident[EI_CLASS]` for 64-bit objects.
const ELFCLASS64: u8 = 2;
/// `e_ident[EI_DATA]` for little-endian objects.
const ELFDATA2LSB: u8 = 1;
/// Offset of `e_machine` in the ELF header.
const E_MACHINE_OFFSET: usize = 18;
/// How many bytes of a file [`Arch::of_elf`] needs.
pub const ELF_HEADER_PREFIX: usize = 20;

/// A target architecture, named as Kubernetes and OCI name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Arch {
    /// x86-64 (`x86_64`).
    Amd64,
    /// 64-bit ARM (`aarch64`).
    Arm64,
}

impl Arch {
    /// Every architecture kubeferry builds bundles for.
    pub const ALL: [Arch; 2] = [Arch::Amd64, Arch::Arm64];

    /// The OCI / Kubernetes name: `amd64`, `arm64`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The kernel's name (`uname -m`): `x86_64`, `aarch64`.
    pub fn kernel_name(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64",
            Arch::Arm64 => "aarch64",
        }
    }

    /// The architecture this program was compiled for, if kubeferry supports it.
    pub fn current() -> Option<Arch> {
        Self::from_kernel_name(std::env::consts::ARCH)
    }

    /// Maps `uname -m` (or Rust's `std::env::consts::ARCH`) to an architecture.
    pub fn from_kernel_name(name: &str) -> Option<Arch> {
        match name {
            "x86_64" => Some(Arch::Amd64),
            "aarch64" | "arm64" => Some(Arch::Arm64),
            _ => None,
        }
    }

    /// The architecture of the host kernel (`uname -m`).
    pub fn host() -> Option<Arch> {
        let uts = nix::sys::utsname::uname().ok()?;
        Self::from_kernel_name(&uts.machine().to_string_lossy())
    }

    /// ELF `e_machine` value of executables for this architecture.
    pub fn elf_machine(self) -> u16 {
        match self {
            Arch::Amd64 => EM_X86_64,
            Arch::Arm64 => EM_AARCH64,
        }
    }

    /// Reads the architecture of a 64-bit little-endian ELF executable from its first
    /// [`ELF_HEADER_PREFIX`] bytes.
    pub fn of_elf(header: &[u8]) -> Result<Arch, ElfError> {
        if header.len() < ELF_HEADER_PREFIX || header[..4] != ELF_MAGIC {
            return Err(ElfError::NotElf);
        }
        if header[4] != ELFCLASS64 || header[5] != ELFDATA2LSB {
            return Err(ElfError::NotElf64Le);
        }
        let machine = u16::from_le_bytes([header[E_MACHINE_OFFSET], header[E_MACHINE_OFFSET + 1]]);
        Arch::ALL
            .into_iter()
            .find(|arch| arch.elf_machine() == machine)
            .ok_or(ElfError::UnknownMachine(machine))
    }
}

/// ELF program header type of the dynamic loader's path.
const PT_INTERP: u32 = 3;

/// Whether a 64-bit little-endian ELF executable asks for a dynamic loader (has a
/// `PT_INTERP` program header). A static stub runs on a host with no libraries at all.
pub fn elf_is_dynamic(elf: &[u8]) -> Result<bool, ElfError> {
    Arch::of_elf(elf)?;
    let u16_at = |at: usize| elf.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |at: usize| elf.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(32), u16_at(54), u16_at(56)) else {
        return Err(ElfError::NotElf);
    };
    for i in 0..usize::from(phnum) {
        let at = usize::try_from(phoff).map_err(|_| ElfError::NotElf)? + i * usize::from(phentsize);
        let p_type = elf.get(at..at + 4).ok_or(ElfError::NotElf)?;
        if u32::from_le_bytes([p_type[0], p_type[1], p_type[2], p_type[3]]) == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Why a file is not an executable kubeferry can use as a stub.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    /// No ELF magic.
    #[error("not an ELF executable")]
    NotElf,
    /// A 32-bit or big-endian ELF file.
    #[error("not a 64-bit little-endian ELF executable")]
    NotElf64Le,
    /// An `e_machine` kubeferry does not build for.
    #[error("ELF machine {0} is not one kubeferry supports")]
    UnknownMachine(u16),
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An architecture name kubeferry does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown architecture '{0}' (expected amd64 or arm64)")]
pub struct UnknownArch(pub String);

impl FromStr for Arch {
    type Err = UnknownArch;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "amd64" | "x86_64" => Ok(Arch::Amd64),
            "arm64" | "aarch64" => Ok(Arch::Arm64),
            other => Err(UnknownArch(other.to_string())),
        }
    }
}

impl serde::Serialize for Arch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Arch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(class: u8, data: u8, machine: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(&ELF_MAGIC);
        h[4] = class;
        h[5] = data;
        h[18..20].copy_from_slice(&machine.to_le_bytes());
        h
    }

    #[test]
    fn reads_machine_of_elf_headers() {
        assert_eq!(Arch::of_elf(&header(2, 1, 62)), Ok(Arch::Amd64));
        assert_eq!(Arch::of_elf(&header(2, 1, 183)), Ok(Arch::Arm64));
        assert_eq!(Arch::of_elf(&header(2, 1, 40)), Err(ElfError::UnknownMachine(40)));
        assert_eq!(Arch::of_elf(&header(1, 1, 62)), Err(ElfError::NotElf64Le));
        assert_eq!(Arch::of_elf(b"#!/bin/sh\n echo hi there"), Err(ElfError::NotElf));
        assert_eq!(Arch::of_elf(&ELF_MAGIC), Err(ElfError::NotElf));
    }

    #[test]
    fn the_running_test_binary_is_the_current_arch() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(Arch::of_elf(&exe).ok(), Arch::current());
    }

    #[test]
    fn tells_dynamic_executables() {
        // Test binaries are linked dynamically unless built with crt-static.
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(elf_is_dynamic(&exe), Ok(!cfg!(target_feature = "crt-static")));
        assert_eq!(elf_is_dynamic(b"not an elf at all, not at all"), Err(ElfError::NotElf));
    }

    #[test]
    fn names_parse_both_ways() {
        for arch in Arch::ALL {
            assert_eq!(arch.name().parse::<Arch>(), Ok(arch));
            assert_eq!(arch.kernel_name().parse::<Arch>(), Ok(arch));
        }
        assert_eq!(
            "riscv64".parse::<Arch>().unwrap_err().to_string(),
            "unknown architecture 'riscv64' (expected amd64 or arm64)"
        );
    }
}
