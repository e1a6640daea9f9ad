//! The manual pages and shell completions the image installs, generated from the command
//! definitions by the binary itself.

use crate::common::sluice_status;

#[test]
fn manual_pages_cover_every_command_with_its_options() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = sluice_status(&["generate", "man", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let page = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let main = page("sluice.1");
    assert!(main.starts_with(".ie") || main.contains(".TH sluice 1"), "{main}");
    for word in ["SIGUSR1", "/etc/sluice/config.yaml", "check\\-config", "queue"] {
        assert!(main.contains(word), "{word} not in sluice.1");
    }
    assert!(page("sluice-queue-list.1").contains("older\\-than"));
    assert!(page("sluice-config-show.1").contains("changed"));
    assert!(page("sluice-check-config.1").contains("json"));
    assert!(!dir.path().join("sluice-generate.1").exists(), "the packaging helper stays out of the manual");
}

#[test]
fn bash_completion_completes_subcommands() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = sluice_status(&["generate", "completions", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    for file in ["sluice.bash", "_sluice", "sluice.fish"] {
        assert!(dir.path().join(file).is_file(), "{file}");
    }
    // Ask bash itself what `sluice qu<TAB>` and `sluice queue <TAB>` complete to.
    let script = format!(
        "source {}; COMP_WORDS=(sluice qu); COMP_CWORD=1; _sluice sluice qu sluice; echo \"${{COMPREPLY[@]}}\"; \
         COMP_WORDS=(sluice queue ''); COMP_CWORD=2; _sluice sluice '' queue; echo \"${{COMPREPLY[@]}}\"",
        dir.path().join("sluice.bash").display()
    );
    let out = std::process::Command::new("bash").args(["-c", &script]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("queue"), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let queue = lines.next().unwrap_or_default();
    for sub in ["list", "summary", "show", "flush", "hold", "release", "bounce", "delete"] {
        assert!(queue.split_whitespace().any(|w| w == sub), "{sub} not in {queue:?}");
    }
}
