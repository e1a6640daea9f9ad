//! `sluice sendmail` (also run as `sendmail`): the local submission interface cron, PHP and
//! scripts call. It never writes the spool: it hands the message to the running daemon over
//! a Unix socket, where the daemon learns the caller's uid from the socket (SO_PEERCRED), and
//! exits with a sysexits code.
//!
//! Flags: `-t` (recipients from To/Cc/Bcc, added to those given as arguments), `-i`/`-oi` (a
//! lone "." line does not end the input), `-f ADDR`/`-r ADDR` (return path; honoured only for
//! `sendmail.trusted_users`), `-F NAME` (full name for an added From), `-bm` (the default: a
//! message on stdin), `-bs` (SMTP on stdin and stdout), `-bp` (list the queue, as `mailq`),
//! `-q` (flush the queue; `-qRdomain` that domain's mail, `-qIid` one message; an interval
//! as in `-q30m` is ignored: the daemon runs the queue itself), `-C FILE` (the config,
//! default /etc/sluice/config.yaml or $SLUICE_CONFIG). `-B`, `-o*`, `-v`, `-N` and `-O` are
//! accepted and ignored, as other sendmail replacements do.

pub mod maildrop;
mod smtp;

use std::io::{self, BufRead, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// sysexits.h
pub const EX_OK: u8 = 0;
pub const EX_USAGE: u8 = 64;
pub const EX_DATAERR: u8 = 65;
pub const EX_UNAVAILABLE: u8 = 69;
pub const EX_SOFTWARE: u8 = 70;
pub const EX_TEMPFAIL: u8 = 75;
pub const EX_CONFIG: u8 = 78;

/// One message handed to the daemon: this header line as JSON, then `size` bytes of message
/// (CRLF line ends, not dot-stuffed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// `-f`: "" is the null return path.
    pub from: Option<String>,
    pub full_name: Option<String>,
    /// `-t`
    pub extract: bool,
    pub recipients: Vec<String>,
    pub size: usize,
}

/// The daemon's answer, one JSON line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Queued(String),
    /// A sysexits code and why.
    Refused {
        exit: u8,
        text: String,
    },
}

/// What the command line asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Mode {
    /// `-bm`: a message on stdin.
    #[default]
    Message,
    /// `-bs`: SMTP on stdin and stdout.
    Smtp,
    /// `-bp`, or run as `mailq`: list the queue.
    List,
    /// `-q...`: flush the queue, or the messages this selects.
    Flush { domain: Option<String>, id: Option<String> },
    /// `--help`: print the usage (sendmail has no help flag; ours must not send mail).
    Help,
}

const USAGE: &str = "\
usage: sendmail [-t] [-i] [-f ADDR] [-F NAME] [-C CONFIG] [RECIPIENT...] < message
       sendmail -bs | -bp | -q | -qRdomain | -qIqueue-id
  -t          recipients from the To, Cc and Bcc fields (Bcc removed)
  -i, -oi     a line holding only \".\" does not end the message
  -f ADDR     the envelope sender (trusted users only; \"\" is the null sender)
  -F NAME     the full name for a From field that is added
  -C CONFIG   the config file (default /etc/sluice/config.yaml)
  -bs         SMTP on standard input and output
  -bp         list the queue (as mailq)
  -q...       flush the queue, or one domain's (-qR) or one message (-qI)
The message goes to the daemon over sendmail.socket; while the daemon is down it waits in the
maildrop and is taken in when it starts. Exit codes are sysexits(3)'s.
";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    pub extract: bool,
    pub ignore_dots: bool,
    pub from: Option<String>,
    pub full_name: Option<String>,
    pub mode: Mode,
    pub config: Option<PathBuf>,
    pub recipients: Vec<String>,
}

/// Parses sendmail's command line (without the program name).
pub fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
    let mut i = 0;
    // A flag's value: glued (`-fuser`) or the next argument (`-f user`).
    let value = |i: &mut usize, arg: &str, flag: &str| -> Result<String, String> {
        let glued = &arg[flag.len()..];
        if !glued.is_empty() {
            return Ok(glued.to_string());
        }
        *i += 1;
        args.get(*i).cloned().ok_or_else(|| format!("{flag} needs a value"))
    };
    while i < args.len() {
        let arg = args[i].as_str();
        match arg {
            "--" => {
                o.recipients.extend(args[i + 1..].iter().cloned());
                break;
            }
            "--help" => o.mode = Mode::Help,
            "-t" => o.extract = true,
            "-i" | "-oi" => o.ignore_dots = true,
            "-bm" => o.mode = Mode::Message,
            "-bs" => o.mode = Mode::Smtp,
            "-bp" => o.mode = Mode::List,
            a if a.starts_with("-qR") => o.mode = Mode::Flush { domain: Some(value(&mut i, a, "-qR")?), id: None },
            a if a.starts_with("-qI") => o.mode = Mode::Flush { domain: None, id: Some(value(&mut i, a, "-qI")?) },
            a if a.starts_with("-q") => o.mode = Mode::Flush { domain: None, id: None },
            a if a.starts_with("-f") => o.from = Some(value(&mut i, a, "-f")?),
            a if a.starts_with("-r") => o.from = Some(value(&mut i, a, "-r")?),
            a if a.starts_with("-F") => o.full_name = Some(value(&mut i, a, "-F")?),
            a if a.starts_with("-C") => o.config = Some(PathBuf::from(value(&mut i, a, "-C")?)),
            // Accepted for compatibility; nothing to do.
            a if a.starts_with("-B") || a.starts_with("-N") || a.starts_with("-O") => {
                if a.len() == 2 {
                    i += 1;
                }
            }
            a if a.starts_with("-o") || a == "-v" || a == "-U" || a == "-m" => {}
            a if a.starts_with('-') && a.len() > 1 => return Err(format!("unsupported option {a}")),
            recipient => o.recipients.push(recipient.to_string()),
        }
        i += 1;
    }
    Ok(o)
}

/// Reads a message from `input`: bare LF becomes CRLF; unless `ignore_dots`, a line holding
/// only "." ends the input.
pub fn read_message(input: &mut impl BufRead, ignore_dots: bool) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let content = line.strip_suffix(b"\n").unwrap_or(&line);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        if !ignore_dots && content == b"." {
            break;
        }
        out.extend_from_slice(content);
        out.extend_from_slice(b"\r\n");
    }
    Ok(out)
}

/// Hands one message to the daemon; when no daemon listens (nothing was sent), leaves it in
/// `maildrop` for the daemon to take in when it runs again.
pub fn submit(socket: &std::path::Path, maildrop: &std::path::Path, request: &Request, message: &[u8]) -> Response {
    let unavailable = |e: io::Error| Response::Refused {
        exit: EX_UNAVAILABLE,
        text: format!("the Sluice daemon is not answering at {}: {e}", socket.display()),
    };
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => {
            return match maildrop::write(maildrop, request, message) {
                Ok(path) => Response::Queued(path.display().to_string()),
                Err(d) => Response::Refused {
                    exit: EX_TEMPFAIL,
                    text: format!(
                        "the Sluice daemon is not answering at {} ({e}), and the maildrop {} cannot be written: {d}",
                        socket.display(),
                        maildrop.display()
                    ),
                },
            };
        }
    };
    let mut head = serde_json::to_vec(request).unwrap_or_default();
    head.push(b'\n');
    if let Err(e) = stream.write_all(&head).and_then(|_| stream.write_all(message)) {
        return unavailable(e);
    }
    let mut answer = String::new();
    if let Err(e) = io::BufReader::new(stream).read_line(&mut answer) {
        return unavailable(e);
    }
    serde_json::from_str(&answer)
        .unwrap_or_else(|e| Response::Refused { exit: EX_SOFTWARE, text: format!("bad answer from the daemon: {e}") })
}

fn config_path(o: &Options) -> PathBuf {
    o.config.clone().or_else(|| std::env::var_os("SLUICE_CONFIG").map(PathBuf::from)).unwrap_or_else(|| "/etc/sluice/config.yaml".into())
}

/// The whole command: returns the exit code.
pub fn main(args: &[String]) -> u8 {
    let o = match parse_args(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("sendmail: {e}\n{USAGE}");
            return EX_USAGE;
        }
    };
    if o.mode == Mode::Help {
        print!("{USAGE}");
        return EX_OK;
    }
    let path = config_path(&o);
    let config = match crate::config::Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sendmail: {}: {e}", path.display());
            return EX_CONFIG;
        }
    };
    match o.mode {
        Mode::Smtp => return smtp::run(&config),
        Mode::List => return crate::admin::print_queue(&config, &Default::default(), false),
        Mode::Flush { domain, id } => {
            let selection =
                crate::admin::protocol::Selection { ids: id.into_iter().collect(), all: domain.is_none(), domain, ..Default::default() };
            return match crate::admin::queue_flush(&config, selection) {
                Ok(ids) => {
                    println!("{} message(s) flushed", ids.len());
                    EX_OK
                }
                Err(e) => {
                    eprintln!("sendmail: {e}");
                    e.exit_code()
                }
            };
        }
        Mode::Message | Mode::Help => {}
    }
    if o.recipients.is_empty() && !o.extract {
        eprintln!("sendmail: no recipients (give addresses, or -t to read them from the message)");
        return EX_USAGE;
    }
    let message = match read_message(&mut io::stdin().lock(), o.ignore_dots) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("sendmail: reading the message: {e}");
            return EX_DATAERR;
        }
    };
    let request = Request {
        from: o.from.clone(),
        full_name: o.full_name.clone(),
        extract: o.extract,
        recipients: o.recipients.clone(),
        size: message.len(),
    };
    match submit(&config.sendmail.socket, &config.sendmail.maildrop, &request, &message) {
        Response::Queued(_) => EX_OK,
        Response::Refused { exit, text } => {
            eprintln!("sendmail: {text}");
            exit
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn command_lines_of_cron_php_and_scripts() {
        let o = parse_args(&args("-t -i")).unwrap();
        assert!(o.extract && o.ignore_dots && o.recipients.is_empty());
        let o = parse_args(&args("-FCronDaemon -i -B8BITMIME -oem root")).unwrap();
        assert_eq!((o.full_name.as_deref(), o.recipients.as_slice()), (Some("CronDaemon"), ["root".to_string()].as_slice()));
        let o = parse_args(&args("-f bounce@x.test -F Web -oi a@y.test b@y.test")).unwrap();
        assert_eq!(o.from.as_deref(), Some("bounce@x.test"));
        assert_eq!(o.full_name.as_deref(), Some("Web"));
        assert_eq!(o.recipients, ["a@y.test", "b@y.test"]);
        assert_eq!(parse_args(&args("-bs")).unwrap().mode, Mode::Smtp);
        assert_eq!(parse_args(&args("-bp")).unwrap().mode, Mode::List);
        assert_eq!(parse_args(&args("-q")).unwrap().mode, Mode::Flush { domain: None, id: None });
        assert_eq!(parse_args(&args("-q30m")).unwrap().mode, Mode::Flush { domain: None, id: None });
        assert_eq!(parse_args(&args("-qR example.test")).unwrap().mode, Mode::Flush { domain: Some("example.test".into()), id: None });
        assert_eq!(parse_args(&args("-qIABC")).unwrap().mode, Mode::Flush { domain: None, id: Some("ABC".into()) });
        assert_eq!(parse_args(&args("-C /tmp/c.yaml -- -odd@y.test")).unwrap().recipients, ["-odd@y.test"]);
        assert!(parse_args(&args("-X")).is_err());
        assert!(parse_args(&args("-f")).is_err());
    }

    #[test]
    fn bare_lf_becomes_crlf_and_a_dot_line_ends_the_input_unless_i() {
        let input = b"Subject: x\n\nline\r\n.\nafter\n";
        assert_eq!(read_message(&mut &input[..], false).unwrap(), b"Subject: x\r\n\r\nline\r\n");
        assert_eq!(read_message(&mut &input[..], true).unwrap(), b"Subject: x\r\n\r\nline\r\n.\r\nafter\r\n");
        assert_eq!(read_message(&mut &b"no final newline"[..], false).unwrap(), b"no final newline\r\n");
    }
}
