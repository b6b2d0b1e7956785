//! Reading resource documents from YAML files. Every error names the file,
//! the document and the field.

use std::path::{Path, PathBuf};

pub use tokenmesh_core::document::{
    ConfigError, Document, Origin, Resource, parse_documents, parse_resource,
};

/// Largest configuration file read.
const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;

/// Reads every file named, or every `*.yaml`/`*.yml` in a folder named, in order.
pub fn load_paths(paths: &[PathBuf]) -> Result<Vec<Document>, ConfigError> {
    let mut documents = Vec::new();
    for path in paths {
        for file in expand(path)? {
            documents.extend(load_file(&file)?);
        }
    }
    Ok(documents)
}

fn expand(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let fail = |message: String| ConfigError::new(path.display(), "", message);
    let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| fail(format!("cannot list: {e}")))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(fail("the folder holds no *.yaml or *.yml file".into()));
    }
    Ok(files)
}

fn load_file(file: &Path) -> Result<Vec<Document>, ConfigError> {
    let fail = |message: String| ConfigError::new(file.display(), "", message);
    let meta = std::fs::metadata(file).map_err(|e| fail(format!("cannot read: {e}")))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(fail(format!("larger than {MAX_FILE_BYTES} bytes")));
    }
    let text = std::fs::read_to_string(file).map_err(|e| fail(format!("cannot read: {e}")))?;
    parse_documents(Some(file), &text)
}
