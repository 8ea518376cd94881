// @ts-check
// echo: returns the job's data unchanged, after one log line and progress 100.
// The JavaScript twin of plugins/echo/rust.
import { exportProcessor, Outcome } from 'bullpen-guest';

export const { process } = exportProcessor((job) => {
  job.log(`echo: job ${job.id} (${job.name})`);
  job.progress(100);
  return Outcome.completeJson(job.dataJson);
});
