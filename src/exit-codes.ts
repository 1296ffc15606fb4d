// Exit codes of xdevice-node (xdevice-cli's are in src/cli/cli.ts). systemd's
// unit does not restart on NODE_EXIT.refused or NODE_EXIT.removed
// (RestartPreventExitStatus=2 10): restarting cannot fix either.

export const NODE_EXIT = {
  /** Stopped by SIGTERM/SIGINT after finishing in-flight work and checkpointing. */
  ok: 0,
  /** Failed at run time (a failed fdatasync, a WAL write error): restart may help. */
  failed: 1,
  /** Refused to start: bad configuration, a locked data directory, missing or inconsistent state. */
  refused: 2,
  /** This node was removed from the cluster: it must not come back by itself. */
  removed: 10,
} as const;

/** Exit code of a node removed from the cluster. */
export const EXIT_REMOVED = NODE_EXIT.removed;
