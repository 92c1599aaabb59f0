//! Finding the installer stub for an architecture and checking that it is a static
//! executable for that architecture.

use std::path::{Path, PathBuf};

use kubeferry_installer::arch::{Arch, elf_is_dynamic};

use crate::error::{Error, Result};

/// Environment variable naming a directory that holds `kubeferry-stub-ARCH` files.
pub const STUB_DIR_ENV: &str = "KUBEFERRY_STUB_DIR";

/// The file name of the stub for `arch`.
pub fn stub_file_name(arch: Arch) -> String {
    format!("kubeferry-stub-{arch}")
}

/// Where a stub for `arch` is looked for when none is given: `$KUBEFERRY_STUB_DIR`, then the
/// directory of the running `kubeferry`, then `../lib/kubeferry/` beside it.
pub fn search_path(arch: Arch) -> Vec<PathBuf> {
    let name = stub_file_name(arch);
    let mut places = Vec::new();
    if let Some(dir) = std::env::var_os(STUB_DIR_ENV) {
        places.push(PathBuf::from(dir).join(&name));
    }
    if let Some(dir) = std::env::current_exe().ok().and_then(|exe| exe.parent().map(Path::to_path_buf)) {
        places.push(dir.join(&name));
        places.push(dir.join("../lib/kubeferry").join(&name));
    }
    places
}

/// Reads the stub for `arch`: `given` if set, else the first file of [`search_path`].
pub fn load(arch: Arch, given: Option<&Path>) -> Result<(PathBuf, Vec<u8>)> {
    let path = match given {
        Some(path) => path.to_path_buf(),
        None => {
            let places = search_path(arch);
            places.iter().find(|p| p.is_file()).cloned().ok_or_else(|| Error::StubNotFound {
                arch,
                searched: places.iter().map(|p| format!("'{}'", p.display())).collect::<Vec<_>>().join(", "),
            })?
        }
    };
    let bytes = std::fs::read(&path).map_err(Error::io("read", &path))?;
    check(&path, &bytes, arch)?;
    Ok((path, bytes))
}

/// Checks that `bytes` are a static ELF executable for `arch`.
pub fn check(path: &Path, bytes: &[u8], arch: Arch) -> Result<()> {
    let found =
        Arch::of_elf(bytes).map_err(|source| Error::StubNotElf { path: path.to_path_buf(), source })?;
    if found != arch {
        return Err(Error::BadStub {
            path: path.to_path_buf(),
            arch,
            reason: format!("it is an executable for {found}"),
        });
    }
    if elf_is_dynamic(bytes).map_err(|source| Error::StubNotElf { path: path.to_path_buf(), source })? {
        return Err(Error::BadStub {
            path: path.to_path_buf(),
            arch,
            reason: "it is linked dynamically, and a target host may lack its libraries".into(),
        });
    }
    Ok(())
}
