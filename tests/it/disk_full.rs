//! A nearly full spool file system answers 452 4.3.1 at MAIL.

use crate::common::TestRelay;

#[test]
fn below_min_free_space_mail_gets_452_4_3_1() {
    // No test machine has an exabyte free, so the threshold is always crossed.
    let dir_cfg = "spool: { path: SPOOL, min_free_space: 1000000000000000000 }\n";
    let tmp = tempfile::tempdir().unwrap();
    let relay = TestRelay::with_config(&dir_cfg.replace("SPOOL", tmp.path().join("s").to_str().unwrap()));
    let mut c = relay.client();
    c.cmd("EHLO c.test");
    let r = c.cmd("MAIL FROM:<a@x.test>");
    assert_eq!((r.code, r.text()), (452, "4.3.1 Insufficient system storage, try again later".into()));
    assert_eq!(c.cmd("NOOP").code, 250);
}
