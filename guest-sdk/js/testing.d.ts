// Typings for bullpen-guest/testing: unit-test a processor with `node --test`.

/** One host call, named by its WIT function, with its arguments (JSON text parsed). */
export interface HostCall {
  name:
    | 'update-data'
    | 'update-progress'
    | 'log'
    | 'move-to-delayed'
    | 'rate-limit'
    | 'move-to-wait'
    | 'add-child'
    | 'wait-for-children'
    | 'children-values';
  args: unknown[];
}

/** How the attempt ended. */
export type TestOutcome =
  | { kind: 'completed'; value: unknown }
  | { kind: 'failed'; failure: 'retry' | 'unrecoverable'; reason: string; stack?: string }
  | { kind: 'failed'; failure: 'retry-after'; reason: string; delayMs: number; stack?: string }
  | { kind: 'moved'; to: 'delayed' | 'wait' | 'waiting-children' };

/** What one run did. */
export interface TestRun {
  outcome: TestOutcome;
  calls: HostCall[];
  /** The job data at the end, as update-data left it. */
  data: unknown;
}

export interface TestJobOptions {
  name?: string;
  id?: string;
  queue?: string;
  /** Attempts before this one (BullMQ attemptsMade); attemptsStarted is one more. */
  attemptsMade?: number;
  /** Job options (BullMQ field names). */
  opts?: object;
  /** The queue's variables (`variable(name)`). */
  variables?: Record<string, string>;
  /** What children-values returns: [child key, return value] pairs. */
  childrenValues?: Array<[string, unknown]>;
  /** Children of an earlier attempt are still pending: wait-for-children answers true. */
  pendingChildren?: boolean;
}

/** A job to run a processor on, against an in-memory job context. */
export class TestJob {
  constructor(data: unknown, options?: TestJobOptions);
  /** A job whose data is this JSON text, as stored in Redis. */
  static fromJson(text: string, options?: TestJobOptions): TestJob;
  /** Run `process` (the module's export, from exportProcessor) once on this job. */
  run(process: (job: unknown) => Promise<unknown>): Promise<TestRun>;
}
