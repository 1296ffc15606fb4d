// Every limit of XDevice lives here, with its unit in the name (TigerBeetle's
// constants.zig is the model). `validateLimits()` runs at startup: a limit that
// contradicts another is a configuration bug, not something to discover under load.

const KiB = 1024;
const MiB = 1024 * KiB;

const limitValues = {
  // ---- NBD (src/nbd) ------------------------------------------------------
  /** Largest payload of one NBD request (WRITE data, READ length). */
  requestBytesMax: 32 * MiB,
  /** Options a client may send in one handshake before we disconnect it. */
  handshakeOptionsMax: 128,
  /** Longest string (export name, description, meta context) we accept. */
  nbdStringBytesMax: 4096,
  /** Longest option payload accepted during the handshake. */
  handshakeOptionBytesMax: 64 * KiB,
  /** Meta contexts a client may ask for in one option. */
  metaContextQueriesMax: 64,
  /** Requests in flight on one connection; more are not read off the socket. */
  nbdInFlightRequestsMax: 64,
  /** Payload bytes in flight on one connection (read back-pressure). */
  nbdInFlightBytesMax: 64 * MiB,
  /** Payload bytes in flight across all of a server's connections. */
  nbdInFlightBytesTotalMax: 512 * MiB,
  /** Connections one server accepts at once. */
  nbdConnectionsMax: 1024,
  /** Minimum / preferred / maximum block size advertised in NBD_INFO_BLOCK_SIZE. */
  nbdBlockSizeMinBytes: 1,
  nbdBlockSizePreferredBytes: 4 * KiB,
  /** Descriptors returned in one BLOCK_STATUS reply. */
  blockStatusExtentsMax: 64 * KiB,
  /** Milliseconds a client may take to finish the handshake. */
  handshakeTimeoutMs: 30_000,
  /** Grants in the NBD export allow list (export-allow), over every export. */
  nbdExportGrantsMax: 4096,
  /** Longest principal (certificate subject or PSK identity) in one grant, in bytes. */
  nbdPrincipalBytesMax: 1024,

  // ---- WAL (src/wal) -------------------------------------------------------
  /** Size a WAL segment is preallocated to. */
  walSegmentBytes: 64 * MiB,
  /** Largest record payload (an entry holds at most one NBD request plus framing). */
  walRecordPayloadBytesMax: 32 * MiB + 64 * KiB,
  /** Bytes gathered into one write+fdatasync by group commit. */
  walBatchBytesMax: 8 * MiB,
  /** Alignment of O_DIRECT writes. */
  walAlignmentBytes: 4 * KiB,
  /** Obsolete WAL segment files kept to start later segments in (recycled: no preallocation); more are deleted. */
  walRecycledSegments: 2,
  /** Smallest write the `compression` option compresses (smaller ones gain less than LZ4 costs). */
  compressWriteBytesMin: 1 * KiB,
  /** Writes from this size on are compressed on the thread pool, off the event loop (smaller ones: the hop costs more than LZ4). */
  compressAsyncBytesMin: 128 * KiB,
  /**
   * Apply punches a hole for a WRITE_ZEROES or all-zero write of a plaintext
   * device from this size on; a shorter one is written as zeroes with the
   * batch's other writes (one pwritev). Measured on ext4 here: a 4 KiB punch
   * costs 47-51 µs on the file's I/O thread against 14-21 µs for a 4 KiB
   * pwrite and 12 µs in a batch, and each punch also split the batch, so a
   * 4k mix with half its writes zero ran at 0.77x of compression off. TRIM
   * always punches (the client asked to free the space); encrypted devices
   * always punch (a hole is their zero plaintext, zero bytes are not).
   */
  zeroHoleBytesMin: 64 * KiB,
  /**
   * Writes from this size on are probed first: LZ4 on a few samples of
   * compressProbeBytes (start, middle, end); when none saves 1/16, the write
   * goes as written without gathering or compressing it (random or encrypted
   * data: the full attempt halved 1 MiB write throughput for nothing).
   */
  compressProbeWriteBytesMin: 64 * KiB,
  compressProbeBytes: 4 * KiB,
  /**
   * A device's writes go untried after this many attempts in a row that did
   * not pay, 1, 2, 4 ... up to compressBackoffSkipMax of them after each
   * further one (src/device/compression.ts CompressionBackoff). Measured on
   * 3 nodes, 4k random data at QD32: LZ4 attempts were 11.8% of the leader's
   * CPU, all of it for nothing.
   */
  compressBackoffStreak: 4,
  compressBackoffSkipMax: 64,
  /** How often the test-only fault file ($XDEVICE_FAULT_FILE) is checked for changes. */
  faultFilePollMs: 100,
  /** Largest fault file read; anything longer is refused as malformed. */
  faultFileBytesMax: 4 * KiB,

  // ---- Raft (src/raft) -----------------------------------------------------
  /** Ticks without a leader's message before a follower campaigns (randomised in [n, 2n)). */
  electionTicks: 10,
  /** Ticks between leader heartbeats. */
  heartbeatTicks: 1,
  /** Milliseconds per tick in the node runtime. */
  tickMs: 50,
  /** Bytes of entries in one AppendEntries message. */
  raftMessageBytesMax: 8 * MiB,
  /** AppendEntries messages in flight to one peer before waiting for acks. */
  raftInFlightMessagesMax: 256,
  /** Bytes in flight to one peer. */
  raftInFlightBytesMax: 64 * MiB,
  /** Proposed but uncommitted bytes the leader accepts before refusing proposals. */
  raftUncommittedBytesMax: 256 * MiB,
  /**
   * Largest term and index a peer may send (far below 2^53, where JavaScript
   * numbers stop counting): a larger one is a protocol error that closes the
   * link, never a value that reaches Raft or the WAL.
   */
  raftTermMax: 2 ** 48,
  /**
   * How far above this node's term a peer outside the configuration may lead
   * it (the leaderless and joining exceptions of src/replica/peer-input.ts).
   * A stranger's term near raftTermMax would otherwise spread through the
   * cluster and leave no term to elect a leader in (found by the simulator).
   */
  peerTermJumpMax: 2 ** 32,
  raftIndexMax: 2 ** 48,
  /** Pending ReadIndex requests. */
  raftReadIndexPendingMax: 4096,
  /**
   * Lease reads (the `lease-reads` option): how much faster, in percent, one
   * node's clock may run than another's, timer slop included. A follower
   * that acknowledged a leader's heartbeat refuses every other candidate for
   * electionTicks of its own ticks (at least electionTicks - 1 whole ticks);
   * the leader counts its lease as that, shortened by this bound, from the
   * moment the heartbeat left: electionTicks 10 and 10% give 8 ticks (and
   * 405 ms of the leader's own clock). Clocks that drift further, or a
   * follower whose timer fires this much early, make lease reads unsafe.
   */
  leaseClockDriftPercent: 10,
  /** Payload bytes of committed entries handed to the state machine in one Ready. */
  raftReadyCommittedBytesMax: 64 * MiB,
  /** Clients whose request ids the applier remembers (least recently used forgotten first). */
  raftDedupClientsMax: 65_536,
  /** Request ids of one client remembered above its acknowledged floor. */
  raftDedupWindowMax: 4096,

  // ---- Cluster (src/cluster) ----------------------------------------------
  /** Shortest cluster secret accepted (128 bits). */
  clusterSecretBytesMin: 16,
  /** Largest cluster secret file read. */
  clusterSecretFileBytesMax: 4 * KiB,
  /** Largest frame before a peer link is authenticated (a Hello is well under it). */
  peerHandshakeFrameBytesMax: 1 * KiB,
  /** Inbound peer connections handshaking at once; more are closed on arrival. */
  peerHandshakingConnectionsMax: 32,
  /** Inbound peer connections of any kind (TLS handshakes included). */
  peerInboundConnectionsMax: 256,
  /** A peer link must finish its handshake within this long. */
  peerHandshakeTimeoutMs: 5_000,
  /** An inbound link that carried a frame this recently is live: a second link claiming its id is refused. */
  peerLinkLiveMs: 1_500,
  /**
   * A member without a leader this long accepts a leader's messages from a
   * peer outside its configuration (one added by a change it has not applied).
   */
  peerLeaderlessGraceMs: 10_000,
  /** Largest frame on a peer link. */
  peerFrameBytesMax: 48 * MiB,
  /** Bytes queued for one peer before messages to it are dropped (Raft retries). */
  peerQueueBytesMax: 128 * MiB,
  /** Reconnect backoff, milliseconds. */
  peerReconnectMinMs: 50,
  peerReconnectMaxMs: 2_000,
  /** Interval between pings on a peer link (round-trip metric, dead-link detection). */
  peerPingIntervalMs: 500,
  /** A peer link with no pong for this long is torn down and redialled. */
  peerIdleTimeoutMs: 3_000,
  /** Snapshot chunk size streamed to a lagging node. */
  snapshotChunkBytes: 1 * MiB,
  /**
   * Preserved blocks of device snapshots in one frame of a Raft snapshot
   * stream (src/device/snapshot-transfer.ts); the sender also keeps a frame's
   * data near snapshotChunkBytes.
   */
  snapshotStreamBlocksPerFrameMax: 256,
  /** A snapshot receiver must report the stream installed within this long. */
  snapshotResultTimeoutMs: 120_000,
  /**
   * A sender that offered LZ4 chunks waits this long for the receiver to say
   * it decodes them before the first chunk (one round trip; an older
   * receiver never answers and gets plain chunks after the wait).
   */
  snapshotLz4AnswerMs: 1000,
  /**
   * How often a sender waiting for that report checks that the connection the
   * stream went over still stands: a receiver that dies after the last chunk
   * can never report, and its peer must not wait out snapshotResultTimeoutMs
   * before streaming again (simulator seeds 7000108, 7004734).
   */
  snapshotConnectionCheckMs: 1000,
  /** A proposal not applied within this long is proposed again (same request id). */
  proposalRetryMs: 2_000,
  /** A client request (write, read, table change) fails with EIO after this long without a quorum. */
  requestTimeoutMs: 10_000,
  /** A ReadIndex round without an answer after this long is asked again. */
  readIndexRetryMs: 1_000,
  /** Readys handed out and not yet advanced (the WAL and apply pipeline depth). */
  readyOutstandingMax: 64,
  /** A checkpoint is taken after this many applied entries ... */
  checkpointEntries: 200_000,
  /** ... or this many applied payload bytes. */
  checkpointBytes: 1024 * MiB,
  /** addNode waits this long for the new learner to catch up before promoting it. */
  addNodeCatchUpTimeoutMs: 600_000,
  /** A learner is promoted only within this many entries of the commit index (and with its snapshot installed). */
  learnerPromotionLagEntriesMax: 64,
  /** addNode first connects to (and authenticates with) the new node; it gives up after this long. */
  addNodeProbeTimeoutMs: 5_000,
  /** The leader keeps this many entries below its checkpoint for lagging followers before it lets them need a snapshot. */
  walRetainEntriesMax: 100_000,
  /** ... and at most this many payload bytes of them (the uncompacted log is held in memory). */
  walRetainBytesMax: 256 * MiB,
  /**
   * What the in-memory log may hold: entries since the last checkpoint, those
   * retained for followers, and proposals not yet committed (checked below).
   */
  walMemoryLogBytesMax: 2048 * MiB,

  // ---- Devices (src/device) ------------------------------------------------
  /** Devices in one cluster. */
  devicesMax: 256,
  /** Largest device. */
  deviceBytesMax: 16 * 1024 * 1024 * MiB,
  /** Device name length. */
  deviceNameBytesMax: 255,
  /** Device sizes are whole multiples of this (the smallest logical block size a client may use). */
  deviceSizeAlignmentBytes: 512,
  /** Checksummed ranges of one verify (a VERIFY_RESULT carries 4 bytes each): big devices get larger ranges. */
  verifyRangesMax: 16384,
  /** Verify records kept in the replicated table (older ones are forgotten as new ones apply). */
  verifiesKept: 4,
  /** Bytes a verify may have read ahead of later writes and not yet checksummed; apply waits beyond it. */
  verifyReadAheadBytesMax: 64 * MiB,
  /** Point-in-time snapshots one device may have (SNAPSHOT_CREATE is refused beyond). */
  snapshotsPerDeviceMax: 32,
  /** Longest snapshot name, in bytes (names are [A-Za-z0-9._-]). */
  snapshotNameBytesMax: 64,
  /**
   * Copy-on-write granularity: the first write to a block of this size after
   * a snapshot preserves the whole block, and the dirty bitmap
   * (qemu:dirty-bitmap:NAME) reports changes in these units.
   */
  snapshotBlockBytes: 64 * KiB,
  /** How long `device verify` waits for every member's result by default. */
  verifyWaitMs: 120_000,

  // ---- Encryption at rest (src/crypt) ---------------------------------------
  /**
   * Bytes of one XTS data unit (dm-crypt `sector_size:4096 iv_large_sectors`):
   * the tweak is the number of this block. An encrypted export advertises it
   * as its minimum block size and refuses unaligned writes, so every write
   * the NBD layer accepts is encrypted on its own (no read-modify-write).
   */
  cryptSectorBytes: 4 * KiB,
  /** Largest encryption key file read. */
  encryptionKeyFileBytesMax: 64 * KiB,
  /** Key-encryption keys one key file may hold (old and new ones during a rotation). */
  keyEncryptionKeysMax: 64,
  /** Times a write encrypted under a key the device left meanwhile (a rekey moved on) is encrypted again and re-proposed. */
  encryptedWriteRetriesMax: 8,
  /** Bytes the rekey job re-encrypts per step (one conditional Raft entry). */
  rekeyStepBytes: 1 * MiB,

  // ---- Space (the data directory's filesystem) ------------------------------
  /**
   * Free bytes kept on the data filesystem (default of the `space-reserve`
   * option): below it the node answers writes with ENOSPC before proposing
   * them, so a full disk is a client error and never an apply failure on
   * every replica. It covers a WAL segment roll plus what may be in flight.
   */
  spaceReserveBytes: 256 * MiB,
  /** How often the free space of the data filesystem is measured. */
  spaceCheckIntervalMs: 250,

  // ---- Admin (src/admin) ---------------------------------------------------
  /** Recent events (leader changes, lost peers, membership) the status page can show. */
  statusPageEventsMax: 100,
  /** Lines (clients) in admin-clients-file: the table is searched on every request. */
  adminClientsMax: 1024,
  /** Size of admin-clients-file (1024 lines of about 100 bytes, with room for comments). */
  adminClientsFileBytesMax: 256 * KiB,

  // ---- Audit trail (src/audit) ---------------------------------------------
  /** A trail file (DATA/audit/<scope>-N.jsonl) is rotated to the next number before it grows past this. */
  auditFileBytesMax: 8 * MiB,
  /** The JSON of one event's (masked) arguments; larger ones are recorded as their size only. */
  auditArgsBytesMax: 4 * KiB,
  /** The reason of one event; longer ones are cut. */
  auditReasonBytesMax: 1 * KiB,
  /** Events the sink has started recording and not finished (proposals, appends); more are counted and dropped. */
  auditPendingMax: 1024,
  /** Records one GET /audit returns (the newest ones matching). */
  auditListRecordsMax: 10_000,
} satisfies Record<string, number>;

export type Limits = { readonly [K in keyof typeof limitValues]: number };
export const limits: Limits = Object.freeze(limitValues);

export function validateLimits(l: Limits = limits): void {
  const fail = (why: string): never => {
    throw new Error(`invalid limits: ${why}`);
  };
  if (l.auditFileBytesMax < 2 * (l.auditArgsBytesMax + l.auditReasonBytesMax + 4 * KiB)) fail('auditFileBytesMax too small for two records');
  if (l.walRecordPayloadBytesMax < l.requestBytesMax) fail('walRecordPayloadBytesMax < requestBytesMax');
  if (l.walSegmentBytes < l.walRecordPayloadBytesMax + l.walAlignmentBytes * 2) fail('walSegmentBytes too small for one record');
  if (l.walSegmentBytes % l.walAlignmentBytes !== 0) fail('walSegmentBytes not aligned');
  if (l.peerFrameBytesMax < l.raftMessageBytesMax + l.requestBytesMax) fail('peerFrameBytesMax < raftMessageBytesMax + requestBytesMax');
  if (l.cryptSectorBytes % l.deviceSizeAlignmentBytes !== 0 || l.rekeyStepBytes % l.cryptSectorBytes !== 0) fail('cryptSectorBytes must be whole device size units, rekeyStepBytes whole crypt sectors');
  if (l.snapshotBlockBytes % l.cryptSectorBytes !== 0 || l.snapshotBlockBytes > l.requestBytesMax) fail('snapshotBlockBytes must be whole crypt sectors and fit one request');
  if (l.snapshotStreamBlocksPerFrameMax < 1 || l.snapshotStreamBlocksPerFrameMax * (l.snapshotBlockBytes + 16) + 4 * KiB > l.peerFrameBytesMax) fail('snapshotStreamBlocksPerFrameMax blocks must fit one peer frame');
  if (!Number.isSafeInteger(l.compressBackoffStreak) || l.compressBackoffStreak < 1 || !Number.isSafeInteger(l.compressBackoffSkipMax) || l.compressBackoffSkipMax < 1) fail('compressBackoffStreak and compressBackoffSkipMax must be positive integers');
  if (l.heartbeatTicks >= l.electionTicks) fail('heartbeatTicks >= electionTicks');
  if (!(l.leaseClockDriftPercent >= 0 && l.leaseClockDriftPercent < 100)) fail('leaseClockDriftPercent must be in [0, 100)');
  if (l.nbdInFlightBytesMax < l.requestBytesMax) fail('nbdInFlightBytesMax < requestBytesMax');
  if (l.nbdInFlightBytesTotalMax < l.nbdInFlightBytesMax) fail('nbdInFlightBytesTotalMax < nbdInFlightBytesMax');
  if (l.raftUncommittedBytesMax < l.requestBytesMax) fail('raftUncommittedBytesMax < requestBytesMax');
  if (l.peerTermJumpMax * 1024 > l.raftTermMax) fail('peerTermJumpMax leaves too few jumps below raftTermMax');
  if (l.raftTermMax * 16 > Number.MAX_SAFE_INTEGER || l.raftIndexMax * 16 > Number.MAX_SAFE_INTEGER) fail('raftTermMax/raftIndexMax too close to 2^53');
  if (l.peerHandshakeFrameBytesMax < 1024 - 1 || l.peerHandshakeFrameBytesMax > 4 * KiB) fail('peerHandshakeFrameBytesMax must fit a Hello (3 ids) and stay small');
  if (l.peerLinkLiveMs < l.peerPingIntervalMs * 2) fail('peerLinkLiveMs < 2 ping intervals');
  if (l.peerLeaderlessGraceMs < l.electionTicks * l.tickMs * 10) fail('peerLeaderlessGraceMs shorter than 10 election timeouts');
  // Checkpoints start at checkpointBytes (plus one Ready of committed entries), retention adds walRetainBytesMax.
  if (l.checkpointBytes + l.raftReadyCommittedBytesMax + l.walRetainBytesMax + l.raftUncommittedBytesMax > l.walMemoryLogBytesMax) fail('checkpointBytes + raftReadyCommittedBytesMax + walRetainBytesMax + raftUncommittedBytesMax > walMemoryLogBytesMax');
}
