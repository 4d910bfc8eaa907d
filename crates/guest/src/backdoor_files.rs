//! The backdoor's guest side, as installed into every image: the files and enablement symlinks
//! of `machinist_backdoor::guest` (their contents are part of every image's hash).

/// A guest file: (absolute path, contents, mode).
pub type GuestFileTuple = (String, Vec<u8>, u32);

/// What the image build installs for the backdoor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackdoorInstall {
    /// Files (script and units).
    pub files: Vec<GuestFileTuple>,
    /// Enablement symlinks (path, target).
    pub symlinks: Vec<(String, String)>,
}

/// The backdoor files installed into images (from `machinist_backdoor::guest`).
pub fn backdoor_files() -> BackdoorInstall {
    use machinist_backdoor::guest;
    BackdoorInstall {
        files: guest::files()
            .into_iter()
            .map(|f| (f.path.to_string(), f.contents.as_bytes().to_vec(), f.mode))
            .collect(),
        symlinks: guest::symlinks()
            .into_iter()
            .map(|l| (l.path, l.target.to_string()))
            .collect(),
    }
}
