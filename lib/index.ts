/**
 * kvmfault public API. Data flows one way: kernel -> ring -> stream -> consumers.
 */
export * from './record';
export * from './ring';
export * from './stream';
export * from './detector';
export * from './kernels';
export * from './capture';
export * from './import/bpftrace';
export * from './analyze';
export * from './workload';
export * from './tracer';
export * from './format';
export * from './doctor';
export * from './metrics';
export * from './counters';
export * from './escalate';
export * from './prove';
