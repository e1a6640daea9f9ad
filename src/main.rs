//! The `sluice` command line: parses arguments and hands over; no logic lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice::config::Config;

// About 10% less CPU per relayed message than glibc's malloc on the 1 KiB relay benchmark
// (see BENCHMARKS.md): a message's life is many short allocations across threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "A high-throughput outbound SMTP relay",
    long_about = "Sluice accepts mail over SMTP (a relay listener for trusted networks, submission with \
STARTTLS and AUTH, submissions with implicit TLS) and from the sendmail command line, stores it \
durably (a 250 means the message is on disk, fsynced), and delivers it by MX, routes or a \
smarthost, with retries, per-destination shaping and RFC 3464 bounces.",
    after_long_help = "Files: /etc/sluice/config.yaml (the config; `sluice check-config`, `sluice config show`), \
/etc/sluice/users (AUTH users; `sluice passwd`), /var/lib/sluice/spool (the queue), \
/var/log/sluice/accounting.jsonl (the accounting stream), /run/sluice/admin.sock (the admin socket). \
Signals to `sluice run`: SIGHUP reloads the config, SIGTERM and SIGINT drain and stop, SIGUSR1 reopens \
the accounting file. Environment: SLUICE_LOG sets the log level (info), SLUICE_LOG_TARGETS=1 adds \
module paths. The metrics port serves /metrics, /healthz and /readyz."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay.
    Run {
        #[arg(long, short, default_value = "/etc/sluice/config.yaml")]
        config: PathBuf,
    },
    /// Validate a configuration file and exit (non-zero with the key and line on error;
    /// warnings, such as a hostname that is not fully qualified, go to stderr).
    CheckConfig {
        #[arg(long, short, default_value = "/etc/sluice/config.yaml")]
        config: PathBuf,
        /// One JSON object: ok, file, warnings; or error, key and line.
        #[arg(long)]
        json: bool,
    },
    /// Print configuration as YAML that parses back to the same config.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// DKIM keys: make one and print its DNS record (`keygen`), or print an existing key's
    /// record (`record`).
    Dkim {
        #[command(subcommand)]
        command: DkimCommand,
    },
    /// Print a new HTTP API key (give it to the application; it is not stored) and its line
    /// for api.keys_file (the key's name, scopes and SHA-256).
    ApiKey {
        name: String,
        /// inject (send mail), admin (the queue endpoints), or both: inject,admin.
        #[arg(long, default_value = "inject")]
        scopes: String,
    },
    /// Print a users-file line (`user:argon2id-hash`) for USER; the password is read from
    /// stdin (asked twice, without echo, on a terminal).
    Passwd { user: String },
    /// The sendmail command line (cron, PHP, scripts): see `sluice sendmail -h` for nothing;
    /// flags as sendmail's: -t -i -oi -f -F -bm -bs -C. Also runs when invoked as `sendmail`.
    #[command(disable_help_flag = true)]
    Sendmail {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Make the running daemon read its config again (as SIGHUP does) and print what changed.
    /// A config that fails to load is refused and the running one kept. Exit 0 reloaded, 1
    /// refused, 69 no daemon answers.
    Reload {
        #[arg(long, short, default_value = "/etc/sluice/config.yaml")]
        config: PathBuf,
    },
    /// Write the manual pages (sluice.1, sluice-queue-list.1, ...) or the shell completions
    /// (bash, zsh, fish) into DIR, from these very definitions (for packaging).
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        what: Generate,
    },
    /// Inspect the queue.
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
}

#[derive(Subcommand)]
enum Generate {
    Man { dir: PathBuf },
    Completions { dir: PathBuf },
}

/// The manual pages and completions, generated from `Cli` (clap_mangen, clap_complete).
fn generate(what: Generate) -> Result<(), String> {
    use clap::CommandFactory;
    let (dir, wrote) = match what {
        Generate::Man { dir } => {
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), &dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            (dir, "manual pages")
        }
        Generate::Completions { dir } => {
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
                clap_complete::generate_to(shell, &mut Cli::command(), "sluice", &dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            (dir, "completions")
        }
    };
    eprintln!("{wrote} written to {}", dir.display());
    Ok(())
}

#[derive(Subcommand)]
enum DkimCommand {
    /// Write a new private key (mode 0600, never over an existing file) and print the DNS TXT
    /// record to publish and the config entry that signs with it.
    Keygen {
        /// The signing domain (d=).
        #[arg(long)]
        domain: String,
        /// The selector (s=): the record goes at SELECTOR._domainkey.DOMAIN.
        #[arg(long)]
        selector: String,
        /// rsa verifies everywhere; ed25519 (RFC 8463) is small and fast but not verified by
        /// every mailbox provider: sign with both to have both.
        #[arg(long, default_value = "rsa", value_parser = ["rsa", "ed25519"])]
        algorithm: String,
        /// RSA key size.
        #[arg(long, default_value_t = 2048)]
        bits: usize,
        /// Where to write the key (default: DOMAIN.SELECTOR.key here).
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Print the DNS TXT record of an existing private key (PEM, RSA or Ed25519).
    Record {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        domain: String,
        #[arg(long)]
        selector: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// The effective config: every key with the value in force (postconf); --changed only
    /// what differs from the defaults (postconf -n); --defaults the defaults (postconf -d).
    Show {
        #[arg(long, short, default_value = "/etc/sluice/config.yaml")]
        config: PathBuf,
        #[arg(long, conflicts_with = "changed")]
        defaults: bool,
        #[arg(long)]
        changed: bool,
    },
}

#[derive(Subcommand)]
enum QueueCommand {
    /// List queued messages (all, or those the filters select) with sender, recipients and
    /// their states, as they are read (mailq, postqueue -p). --json: one JSON object per line.
    List {
        #[arg(long, short, default_value = "/etc/sluice/config.yaml")]
        config: PathBuf,
        /// Only this message (repeatable).
        #[arg(long = "id")]
        ids: Vec<String>,
        /// Only messages with a queued recipient at this domain.
        #[arg(long)]
        domain: Option<String>,
        #[command(flatten)]
        filters: Filters,
        /// One JSON object per message and line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Per destination: queued messages and recipients, the oldest's age, connections open,
    /// message rate, and whether it is suspended (until when, and why).
    Summary {
        #[arg(long, short, default_value = "/etc/sluice/config.yaml")]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One message: envelope, recipients' states and replies, its headers; with --body the
    /// message as stored (postcat -q). Exit 3 when there is no such message.
    Show {
        #[arg(long, short, default_value = "/etc/sluice/config.yaml")]
        config: PathBuf,
        id: String,
        /// The whole message, not only its headers.
        #[arg(long)]
        body: bool,
        #[arg(long)]
        json: bool,
    },
    /// Make messages due now and end their destinations' suspensions (postqueue -f/-s/-i).
    /// Exit 0 done, 1 error, 2 usage, 3 no such message, 69 no daemon answers.
    Flush {
        #[command(flatten)]
        selected: Selected,
    },
    /// Route messages again under the config in force, now (postsuper -r): after a change of
    /// routes, smarthost or policies. Suspended destinations stay suspended. Exit codes as flush.
    Requeue {
        #[command(flatten)]
        selected: Selected,
    },
    /// Hold messages (postsuper -h): never dispatched, across restarts, until released.
    /// Exit codes as flush.
    Hold {
        #[command(flatten)]
        selected: Selected,
    },
    /// Release held messages (postsuper -H); they are attempted at once. Exit codes as flush.
    Release {
        #[command(flatten)]
        selected: Selected,
    },
    /// Bounce every queued recipient of the messages: a DSN (RFC 3464) to each sender, then
    /// the messages leave the queue. Exit codes as flush.
    Bounce {
        #[command(flatten)]
        selected: Selected,
        /// The text the report gives as the reason.
        #[arg(long, default_value = "Returned to the sender by the mail administrator")]
        reason: String,
        /// The enhanced status code (5.x.y).
        #[arg(long, default_value = "5.0.0")]
        status: String,
    },
    /// Relay messages to another MTA over SMTP (to retire this node): each recipient leaves
    /// the queue once that MTA answered 250 for it; DSN parameters, MT-PRIORITY and REQUIRETLS
    /// go with the message. Exit 0 all moved, 1 some kept (listed with why), 2 usage, 3 none
    /// selected, 69 no daemon.
    Transfer(TransferArgs),
    /// Remove messages from the queue (postsuper -d), each selection in one spool change; a
    /// message being delivered goes once that attempt has recorded. Exit codes as flush.
    Delete {
        #[command(flatten)]
        selected: Selected,
        /// Say which messages would go, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// The messages an action is for, and how to report it (shared by flush, hold, release,
/// bounce and delete).
#[derive(clap::Args)]
struct Selected {
    #[arg(long, short, default_value = "/etc/sluice/config.yaml")]
    config: PathBuf,
    /// Queue ids.
    ids: Vec<String>,
    /// Every message with a queued recipient at this domain.
    #[arg(long)]
    domain: Option<String>,
    /// Every queued message.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    filters: Filters,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// `sluice queue transfer`: its `--to` is where the mail goes, so the recipient filter is
/// `--recipient` here.
#[derive(clap::Args)]
struct TransferArgs {
    #[arg(long, short, default_value = "/etc/sluice/config.yaml")]
    config: PathBuf,
    /// The other MTA, HOST:PORT (it must relay for this node: a trusted network, or --login).
    #[arg(long)]
    to: String,
    /// Log in with delivery.smarthost_auth's credentials (after STARTTLS).
    #[arg(long)]
    login: bool,
    /// Queue ids.
    ids: Vec<String>,
    /// Every message with a queued recipient at this domain.
    #[arg(long)]
    domain: Option<String>,
    /// Every queued message.
    #[arg(long)]
    all: bool,
    /// The sender: an address, or a domain (`@domain`); `<>` for bounces.
    #[arg(long)]
    from: Option<String>,
    /// Any recipient: an address, or a domain (`@domain`).
    #[arg(long)]
    recipient: Option<String>,
    /// queued (not yet tried), deferred (tried, still queued) or held.
    #[arg(long, value_parser = ["queued", "deferred", "held"])]
    state: Option<String>,
    /// Arrived at least this long ago (30m, 2h, 1d).
    #[arg(long, value_parser = |s: &str| s.parse::<sluice::config::HumanDuration>().map(|d| d.0.as_secs()))]
    older_than: Option<u64>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

fn transfer(args: TransferArgs) -> ExitCode {
    let TransferArgs { config, to, login, ids, domain, all, from, recipient, state, older_than, json } = args;
    let selection = Filters { from, to: recipient, state, older_than }.selection(ids, domain, all);
    if selection.is_empty() {
        eprintln!("sluice: queue transfer needs queue ids, --domain or --all");
        return ExitCode::from(2);
    }
    if let Err(e) = sluice::queue::transfer::parse_destination(&to) {
        eprintln!("sluice: --to: {e}");
        return ExitCode::from(2);
    }
    let report = match load(&config)
        .map_err(sluice::admin::AdminError::Failed)
        .and_then(|c| sluice::admin::queue_transfer(&c, selection, &to, login))
    {
        Ok(report) => report,
        Err(e) => {
            eprintln!("sluice: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    match json {
        true => println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default()),
        false => {
            println!("{} message(s) transferred to {to}: {}", report.moved.len(), report.moved.join(" "));
            for kept in &report.kept {
                println!("kept {}: {}", kept.id, kept.why);
            }
        }
    }
    if report.kept.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// Filters every queue command takes; each one given must hold.
#[derive(clap::Args)]
struct Filters {
    /// The sender: an address, or a domain (`@domain`); `<>` for bounces.
    #[arg(long)]
    from: Option<String>,
    /// Any recipient: an address, or a domain (`@domain`).
    #[arg(long)]
    to: Option<String>,
    /// queued (not yet tried), deferred (tried, still queued) or held.
    #[arg(long, value_parser = ["queued", "deferred", "held"])]
    state: Option<String>,
    /// Arrived at least this long ago (30m, 2h, 1d).
    #[arg(long, value_parser = |s: &str| s.parse::<sluice::config::HumanDuration>().map(|d| d.0.as_secs()))]
    older_than: Option<u64>,
}

impl Filters {
    fn selection(self, ids: Vec<String>, domain: Option<String>, all: bool) -> sluice::admin::protocol::Selection {
        use sluice::admin::select::QueueState;
        let state = self.state.as_deref().map(|s| match s {
            "held" => QueueState::Held,
            "deferred" => QueueState::Deferred,
            _ => QueueState::Queued,
        });
        sluice::admin::protocol::Selection { ids, domain, all, from: self.from, to: self.to, state, older_than: self.older_than }
    }
}

/// `sluice queue list`: exit 0, 1 error, 69 a daemon that cannot be asked.
fn list(config: &std::path::Path, selection: sluice::admin::protocol::Selection, json: bool) -> ExitCode {
    match load(config) {
        Ok(c) => ExitCode::from(sluice::admin::print_queue(&c, &selection, json)),
        Err(e) => {
            eprintln!("sluice: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `sluice queue show`: exit 0, 1 error, 3 no such message.
fn show(config: &std::path::Path, id: &str, whole: bool, json: bool) -> ExitCode {
    let result = load(config).map_err(sluice::admin::AdminError::Failed).and_then(|c| sluice::admin::queue_show(&c, id, whole));
    match result {
        Ok(view) => {
            match json {
                true => println!("{}", serde_json::to_string_pretty(&view).unwrap_or_default()),
                false => print!("{}", sluice::admin::format_message(&view)),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluice: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// An action on selected messages (`flush`, `delete`): exit 0 done, 1 error, 2 usage, 3 no
/// such message, 69 no daemon. Prints how many and which (`--json`: `{"VERB": [ids]}`).
fn act(
    selected: Selected,
    verb: &str,
    run: impl FnOnce(&Config, sluice::admin::protocol::Selection) -> Result<Vec<String>, sluice::admin::AdminError>,
) -> ExitCode {
    let Selected { config, ids, domain, all, filters, json } = selected;
    let selection = filters.selection(ids, domain, all);
    if selection.is_empty() {
        eprintln!("sluice: queue {verb} needs queue ids, --domain or --all");
        return ExitCode::from(2);
    }
    let config = match load(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice: {e}");
            return ExitCode::FAILURE;
        }
    };
    match run(&config, selection) {
        Ok(ids) if json => {
            println!("{}", serde_json::json!({ verb: ids }));
            ExitCode::SUCCESS
        }
        Ok(ids) => {
            println!("{} message(s) {verb}: {}", ids.len(), ids.join(" "));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluice: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// `sluice reload`. The file is checked here first (the daemon would refuse it the same way),
/// since the admin socket's path is in it.
fn reload(path: &std::path::Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice: {e}\nsluice: not reloaded; the running daemon keeps its config");
            return ExitCode::FAILURE;
        }
    };
    match sluice::admin::reload(&config) {
        Ok(r) => {
            println!("reloaded; listening on {}", r.listeners.join(" "));
            for (what, list) in [("added", &r.added), ("removed", &r.removed), ("changed", &r.changed)] {
                if !list.is_empty() {
                    println!("listeners {what}: {}", list.join(" "));
                }
            }
            if !r.needs_restart.is_empty() {
                println!("needs a restart to take effect (the running values stay): {}", r.needs_restart.join(", "));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluice: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn load(path: &std::path::Path) -> Result<Config, String> {
    Config::load(path).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    // Installed as /usr/sbin/sendmail (a symlink): sendmail's command line, not ours.
    let argv: Vec<String> = std::env::args().collect();
    let invoked_as = argv.first().map(|a| std::path::Path::new(a).file_name().unwrap_or_default().to_string_lossy().into_owned());
    if invoked_as.as_deref() == Some("sendmail") {
        return ExitCode::from(sluice::sendmail::main(&argv[1..]));
    }
    // And as `mailq`: sendmail -bp.
    if invoked_as.as_deref() == Some("mailq") {
        let args: Vec<String> = std::iter::once("-bp".to_string()).chain(argv[1..].iter().cloned()).collect();
        return ExitCode::from(sluice::sendmail::main(&args));
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .event_format(sluice::log::MailLog::for_stderr())
        .init();
    let result = match cli.command {
        Command::Run { config } => load(&config).and_then(|c| {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
            runtime.block_on(sluice::daemon::run(c))
        }),
        Command::Sendmail { args } => return ExitCode::from(sluice::sendmail::main(&args)),
        Command::Reload { config } => return reload(&config),
        Command::Generate { what } => generate(what),
        Command::Dkim { command: DkimCommand::Keygen { domain, selector, algorithm, bits, out } } => {
            sluice::dkim::keygen::keygen(&domain, &selector, &algorithm, bits, out).map(|text| print!("{text}"))
        }
        Command::Dkim { command: DkimCommand::Record { key, domain, selector } } => {
            sluice::dkim::keygen::record(&key, &domain, &selector).map(|text| print!("{text}"))
        }
        Command::ApiKey { name, scopes } => sluice::http::keys::generate(&name, &scopes).map(|(key, line)| {
            println!("# The key, for the application's Authorization: Bearer header (it is not kept anywhere):\n{key}");
            println!("# The line for api.keys_file:\n{line}");
        }),
        Command::Passwd { user } => sluice::admin::users_file_line(&user).map(|line| println!("{line}")),
        Command::CheckConfig { config, json: true } => {
            let loaded = Config::load(&config);
            println!("{}", sluice::config::show::check_report(&config, &loaded));
            return if loaded.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
        }
        Command::CheckConfig { config, json: false } => load(&config).map(|c| {
            for warning in &c.warnings {
                eprintln!("{}: warning: {warning}", config.display());
            }
            println!("{}: OK", config.display());
        }),
        Command::Config { command: ConfigCommand::Show { defaults: true, .. } } => sluice::config::show::defaults().map(|y| print!("{y}")),
        Command::Config { command: ConfigCommand::Show { config, changed, .. } } => load(&config).and_then(|c| {
            let yaml = if changed { sluice::config::show::changed(&c) } else { sluice::config::show::effective(&c) };
            yaml.map(|y| print!("{y}"))
        }),
        Command::Queue { command: QueueCommand::List { config, ids, domain, filters, json } } => {
            return list(&config, filters.selection(ids, domain, false), json);
        }
        Command::Queue { command: QueueCommand::Summary { config, json } } => load(&config).and_then(|c| {
            let rows = sluice::admin::queue_summary(&c).map_err(|e| e.to_string())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?);
            } else {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                // A daemon from before cluster status (upgraded, not restarted) has none to give.
                if let Ok(Some(status)) = sluice::admin::cluster_status(&c) {
                    println!("{}", status.describe());
                }
                print!("{}", sluice::admin::format_summary(&rows, now));
            }
            Ok(())
        }),
        Command::Queue { command: QueueCommand::Show { config, id, body, json } } => return show(&config, &id, body, json),
        Command::Queue { command: QueueCommand::Flush { selected } } => return act(selected, "flushed", sluice::admin::queue_flush),
        Command::Queue { command: QueueCommand::Requeue { selected } } => return act(selected, "requeued", sluice::admin::queue_requeue),
        Command::Queue { command: QueueCommand::Hold { selected } } => {
            return act(selected, "held", |c, s| sluice::admin::queue_hold(c, s, true));
        }
        Command::Queue { command: QueueCommand::Release { selected } } => {
            return act(selected, "released", |c, s| sluice::admin::queue_hold(c, s, false));
        }
        Command::Queue { command: QueueCommand::Bounce { selected, reason, status } } => {
            return act(selected, "bounced", |c, s| sluice::admin::queue_bounce(c, s, status, reason));
        }
        Command::Queue { command: QueueCommand::Transfer(args) } => return transfer(args),
        Command::Queue { command: QueueCommand::Delete { selected, dry_run } } => {
            let verb = if dry_run { "would be deleted" } else { "deleted" };
            return act(selected, verb, |c, s| sluice::admin::queue_delete(c, s, dry_run));
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e}");
            ExitCode::FAILURE
        }
    }
}
