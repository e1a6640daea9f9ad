//! `sluice passwd USER`: reads a password and prints the users-file line for it.
//! On a terminal the password is asked twice with echo off; otherwise one line is read.

use std::io::{self, BufRead, IsTerminal, Write};

use crate::intake::hash_password;

pub fn users_file_line(user: &str) -> Result<String, String> {
    if user.is_empty() || user.contains(':') || user.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("invalid user name {user:?}: no colon, white space or control characters"));
    }
    let stdin = io::stdin();
    let password = if stdin.is_terminal() {
        let first = prompt_hidden("Password: ")?;
        let second = prompt_hidden("Again: ")?;
        if first != second {
            return Err("the passwords do not match".into());
        }
        first
    } else {
        let mut line = String::new();
        stdin.lock().read_line(&mut line).map_err(|e| e.to_string())?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    if password.is_empty() {
        return Err("empty password".into());
    }
    let hash = hash_password(&password).map_err(|e| e.to_string())?;
    Ok(format!("{user}:{hash}"))
}

/// Reads one line from the terminal with echo turned off (restored even on error).
fn prompt_hidden(prompt: &str) -> Result<String, String> {
    eprint!("{prompt}");
    io::stderr().flush().ok();
    let fd = libc::STDIN_FILENO;
    // SAFETY: termios is plain data; tcgetattr fills it for a terminal fd.
    let mut original: libc::termios = unsafe { std::mem::zeroed() };
    if unsafe { libc::tcgetattr(fd, &mut original) } != 0 {
        return Err(io::Error::last_os_error().to_string());
    }
    let mut silent = original;
    silent.c_lflag &= !libc::ECHO;
    // SAFETY: fd is a terminal and silent is a valid termios copied from it.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &silent) };
    let mut line = String::new();
    let read = io::stdin().lock().read_line(&mut line);
    // SAFETY: restores the attributes read above.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &original) };
    eprintln!();
    read.map_err(|e| e.to_string())?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}
