// floor: completes every job with `null` and calls nothing (bench/guests/README.md).
import { exportProcessor, Outcome } from 'bullpen-guest';

export const { process } = exportProcessor(() => Outcome.completeJson('null'));
