// Computes the configuration that results from a ConfChange without touching
// the live one (etcd's confchange/confchange.go and restore.go). The caller
// swaps the result in.

import { InvalidConfChangeError } from './errors.ts';
import { Inflights } from './inflights.ts';
import { Progress } from './progress.ts';
import { ConfChangeType, type ConfChangeSingle } from './confchange.ts';
import { cloneTrackerConfig, type ProgressTracker, type TrackerConfig } from './tracker.ts';
import type { ConfState, NodeId } from './types.ts';

export interface ChangeResult {
  config: TrackerConfig;
  progress: Map<NodeId, Progress>;
}

export class Changer {
  constructor(
    private readonly tracker: ProgressTracker,
    /** The leader's last index: new peers start probing from here. */
    private readonly lastIndex: number,
  ) {}

  enterJoint(autoLeave: boolean, ccs: ConfChangeSingle[]): ChangeResult {
    const { config, progress } = this.checkAndCopy();
    if (config.voters[1].size > 0) throw new InvalidConfChangeError('already in a joint configuration');
    if (config.voters[0].size === 0) throw new InvalidConfChangeError('cannot make a zero-voter configuration joint');
    for (const id of config.voters[0]) config.voters[1].add(id);
    this.apply(config, progress, ccs);
    config.autoLeave = autoLeave;
    return this.checkAndReturn(config, progress);
  }

  leaveJoint(): ChangeResult {
    const { config, progress } = this.checkAndCopy();
    if (config.voters[1].size === 0) throw new InvalidConfChangeError('not in a joint configuration');
    for (const id of config.learnersNext) {
      config.learners.add(id);
      progress.get(id)!.isLearner = true;
    }
    config.learnersNext.clear();
    for (const id of config.voters[1]) {
      if (!config.voters[0].has(id) && !config.learners.has(id)) progress.delete(id);
    }
    config.voters[1].clear();
    config.autoLeave = false;
    return this.checkAndReturn(config, progress);
  }

  /** A change of at most one voter, applied directly (Raft thesis 4.1). */
  simple(ccs: ConfChangeSingle[]): ChangeResult {
    const { config, progress } = this.checkAndCopy();
    if (config.voters[1].size > 0) throw new InvalidConfChangeError('cannot apply a simple change in a joint configuration');
    this.apply(config, progress, ccs);
    const before = this.tracker.config.voters[0];
    const after = config.voters[0];
    let changed = 0;
    for (const id of before) if (!after.has(id)) changed++;
    for (const id of after) if (!before.has(id)) changed++;
    if (changed > 1) throw new InvalidConfChangeError('more than one voter changed without entering a joint configuration');
    return this.checkAndReturn(config, progress);
  }

  private apply(config: TrackerConfig, progress: Map<NodeId, Progress>, ccs: ConfChangeSingle[]): void {
    for (const cc of ccs) {
      if (cc.nodeId === '') continue;
      switch (cc.type) {
        case ConfChangeType.AddNode:
          this.makeVoter(config, progress, cc.nodeId);
          break;
        case ConfChangeType.AddLearnerNode:
          this.makeLearner(config, progress, cc.nodeId);
          break;
        case ConfChangeType.RemoveNode:
          this.remove(config, progress, cc.nodeId);
          break;
        default:
          throw new InvalidConfChangeError(`unknown change type ${String(cc.type)}`);
      }
    }
    if (config.voters[0].size === 0) throw new InvalidConfChangeError('removed all voters');
  }

  private makeVoter(config: TrackerConfig, progress: Map<NodeId, Progress>, id: NodeId): void {
    const pr = progress.get(id);
    if (!pr) {
      this.initProgress(config, progress, id, false);
      return;
    }
    pr.isLearner = false;
    config.learners.delete(id);
    config.learnersNext.delete(id);
    config.voters[0].add(id);
  }

  private makeLearner(config: TrackerConfig, progress: Map<NodeId, Progress>, id: NodeId): void {
    const pr = progress.get(id);
    if (!pr) {
      this.initProgress(config, progress, id, true);
      return;
    }
    if (pr.isLearner) return;
    // Drop the voter role but keep its progress.
    this.remove(config, progress, id);
    progress.set(id, pr);
    // A voter of the outgoing configuration keeps voting there until the
    // joint configuration is left; only then does it become a learner.
    if (config.voters[1].has(id)) {
      config.learnersNext.add(id);
    } else {
      pr.isLearner = true;
      config.learners.add(id);
    }
  }

  private remove(config: TrackerConfig, progress: Map<NodeId, Progress>, id: NodeId): void {
    if (!progress.has(id)) return;
    config.voters[0].delete(id);
    config.learners.delete(id);
    config.learnersNext.delete(id);
    // Still a voter in the outgoing half: keep tracking it.
    if (!config.voters[1].has(id)) progress.delete(id);
  }

  private initProgress(config: TrackerConfig, progress: Map<NodeId, Progress>, id: NodeId, isLearner: boolean): void {
    if (isLearner) config.learners.add(id);
    else config.voters[0].add(id);
    const pr = new Progress(Math.max(this.lastIndex, 1), new Inflights(this.tracker.inFlightMessagesMax, this.tracker.inFlightBytesMax), isLearner);
    // A fresh peer counts as active so check-quorum does not depose the
    // leader before the peer had a chance to answer.
    pr.recentActive = true;
    progress.set(id, pr);
  }

  private checkAndCopy(): ChangeResult {
    const config = cloneTrackerConfig(this.tracker.config);
    const progress = new Map<NodeId, Progress>();
    // Copies, so a change that fails validation leaves the live tracker untouched.
    for (const [id, pr] of this.tracker.progress) progress.set(id, cloneProgress(pr));
    check(config, progress);
    return { config, progress };
  }

  private checkAndReturn(config: TrackerConfig, progress: Map<NodeId, Progress>): ChangeResult {
    check(config, progress);
    return { config, progress };
  }
}

function cloneProgress(pr: Progress): Progress {
  const c = new Progress(pr.next, pr.inflights, pr.isLearner);
  c.match = pr.match;
  c.state = pr.state;
  c.pendingSnapshot = pr.pendingSnapshot;
  c.recentActive = pr.recentActive;
  c.msgAppFlowPaused = pr.msgAppFlowPaused;
  c.ackedSinceHeartbeat = pr.ackedSinceHeartbeat;
  c.resentBelow = pr.resentBelow;
  c.matchAtHeartbeat = pr.matchAtHeartbeat;
  return c;
}

function check(config: TrackerConfig, progress: Map<NodeId, Progress>): void {
  const fail = (why: string): never => {
    throw new InvalidConfChangeError(why);
  };
  for (const ids of [config.voters[0], config.voters[1], config.learners, config.learnersNext]) {
    for (const id of ids) if (!progress.has(id)) fail(`no progress for ${id}`);
  }
  for (const id of config.learnersNext) {
    if (!config.voters[1].has(id)) fail(`${id} is in learnersNext but not an outgoing voter`);
    if (progress.get(id)!.isLearner) fail(`${id} is in learnersNext but already a learner`);
  }
  for (const id of config.learners) {
    if (config.voters[0].has(id) || config.voters[1].has(id)) fail(`${id} is a learner and a voter`);
    if (!progress.get(id)!.isLearner) fail(`${id} is a learner but its progress says voter`);
  }
  if (config.voters[1].size === 0) {
    if (config.learnersNext.size > 0) fail('learnersNext outside a joint configuration');
    if (config.autoLeave) fail('autoLeave outside a joint configuration');
  }
}

/**
 * Rebuild a configuration from a ConfState (a snapshot or the state at
 * restart): the outgoing voters one by one, then the joint step to the
 * incoming half, so the result passes the same checks as live changes.
 */
export function restoreConfState(tracker: ProgressTracker, lastIndex: number, cs: ConfState): ChangeResult {
  const outgoing: ConfChangeSingle[] = cs.votersOutgoing.map((id) => ({ type: ConfChangeType.AddNode, nodeId: id }));
  const incoming: ConfChangeSingle[] = [
    ...cs.votersOutgoing.map((id) => ({ type: ConfChangeType.RemoveNode, nodeId: id })),
    ...cs.voters.map((id) => ({ type: ConfChangeType.AddNode, nodeId: id })),
    ...cs.learners.map((id) => ({ type: ConfChangeType.AddLearnerNode, nodeId: id })),
    ...cs.learnersNext.map((id) => ({ type: ConfChangeType.AddLearnerNode, nodeId: id })),
  ];
  const step = (f: (c: Changer) => ChangeResult) => {
    const r = f(new Changer(tracker, lastIndex));
    tracker.setConfig(r.config, r.progress);
  };
  if (outgoing.length === 0) {
    if (cs.voters.length === 0 && cs.learners.length === 0) return { config: tracker.config, progress: tracker.progress };
    for (const cc of incoming) step((c) => c.simple([cc]));
  } else {
    for (const cc of outgoing) step((c) => c.simple([cc]));
    step((c) => c.enterJoint(cs.autoLeave, incoming));
  }
  return { config: tracker.config, progress: tracker.progress };
}
