/**
 * kvmfault public API. Data flows one way: kernel -> ring -> stream -> consumers.
 */
export * from './record';
export * from './ring';
export * from './stream';
