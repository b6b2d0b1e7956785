//! `token-server hash-password`: the argon2id hash of a password read from
//! standard input, for the users of a `static` IdentityProvider. The
//! password never appears on a command line (shell history, `ps`).

use std::{io::Read, process::ExitCode};

use tokenmesh_core::password::{self, MAX_PASSWORD_LEN, PasswordError};

/// Reads one password (a trailing line end is not part of it) and prints
/// its PHC string.
pub fn run() -> ExitCode {
    match hash_from(std::io::stdin().lock()) {
        Ok(phc) => {
            println!("{phc}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("token-server hash-password: {message}");
            ExitCode::FAILURE
        }
    }
}

fn hash_from(input: impl Read) -> Result<String, String> {
    let mut bytes = Vec::new();
    // One byte more than the longest password tells a long one apart.
    input
        .take(MAX_PASSWORD_LEN as u64 + 3)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read standard input: {e}"))?;
    let text = String::from_utf8(bytes).map_err(|_| "the password is not UTF-8".to_owned())?;
    let password = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    password::hash(password).map_err(|e| match e {
        PasswordError::Length => format!(
            "give a password of 1 to {MAX_PASSWORD_LEN} bytes on standard input (`printf %s \"$PASSWORD\" | token-server hash-password`)"
        ),
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_end_is_not_part_of_the_password() {
        let phc = hash_from("s3cret pass\n".as_bytes()).unwrap();
        check(&phc, "s3cret pass");
        let phc = hash_from("s3cret pass\r\n".as_bytes()).unwrap();
        check(&phc, "s3cret pass");
        assert!(hash_from("".as_bytes()).unwrap_err().contains("1 to"));
        assert!(hash_from("\n".as_bytes()).is_err());
        let long = "x".repeat(MAX_PASSWORD_LEN + 1);
        assert!(hash_from(long.as_bytes()).is_err());
    }

    fn check(phc: &str, password: &str) {
        password::check_hash(phc).unwrap();
        assert!(password::verify(phc, password));
    }
}
