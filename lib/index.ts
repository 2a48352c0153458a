/**
 * kvmfault public API. Data flows one way: kernel -> ring -> stream -> consumers.
 *
 * An explicit list: what README's "Library API" documents and the types its signatures use.
 * Everything else in lib/ is internal (tests and tools import it by path).
 */

// live records
export { openTracer, Tracer, TracerError } from './tracer';
export type { ProbeStatus, TracerErrorCode, TracerMode, TracerOptions, TracerStats } from './tracer';
export type { StreamStats } from './stream';

// one record type for every source
export { Flag, Kind, kindName, UNKNOWN, UNKNOWN_RET } from './record';
export type { EventBatch, FaultEvent, KindName, RecordBatch } from './record';
export { TextFormatter } from './format';
export type { TextFormatterOptions } from './format';

// verdicts, and the kernel judgement they use
export { StaleFaultDetector } from './detector';
export type {
  DetectorKernel, DetectorOptions, DetectorStats, InvalidationRange, StuckCause, VcpuState, Verdict, VerdictListener, VmForecast,
} from './detector';
export { hostKernel, judgeKernel, judgeStaleCheck, retPfTable, SIGN_BIT_SEQ } from './kernels';
export type { KernelEvidence, KernelInfo, KernelStatus, KernelVersion, RetPfTable, StaleCheckSignature } from './kernels';

// capture files, bpftrace logs, analysis
export { CaptureError, CaptureReader, CaptureWriter, openCapture, openCaptureBytes } from './capture';
export type { CaptureDamage, CaptureField, CaptureHeader, CaptureMeta, CaptureWriterOptions, ReplayOptions } from './capture';
export { createBpftraceImporter, importBpftraceLog } from './import/bpftrace';
export type { BpftraceImport, BpftraceImporter, BpftraceImportOptions, SkippedLine } from './import/bpftrace';
export { AnalyzeInputError, analyzeFile, analyzeStream, formatReport, reportJson } from './analyze';
export type { AnalysisReport, AnalyzeOptions, ReportVcpu, ReportVm } from './analyze';
export type { CounterVm, EvidenceLines, TextFormat } from './import';
export type { TimelineData, VcpuSeries, VmSeries } from './report/timeline';

// KVM's own counters, escalation, metrics
export { CounterSourceError, CounterWatch, KVM_STATS, openCounterSource } from './counters';
export type {
  CounterSample, CounterSource, CounterSourceKind, CounterView, CounterWatchOptions, KvmStatName, VcpuCounterView, VmCounterView,
} from './counters';
export { Escalator } from './escalate';
export type { EscalationOptions, EscalationResult, EscalationStats } from './escalate';
export { CounterMetrics, createMetricsServer, FaultMetrics } from './metrics';
export type { CounterMetricsOptions, FaultMetricsOptions } from './metrics';

// built-in guest, host checks, active test
export { runWorkload, WorkloadError } from './workload';
export type {
  InvalidateMethod, InvalidateMode, KvmHostKind, KvmStats, NormalizedWorkloadOptions, WorkloadInfo, WorkloadOptions, WorkloadPattern, WorkloadResult, WorkloadRun, WorkloadVm,
} from './workload';
export { formatDoctor, runDoctor } from './doctor';
export type { Check, CheckStatus, DoctorOptions, DoctorReport, Privileges, ProbePoints, RunningVm, TracerTrial } from './doctor';
export { prove } from './prove';
export type { ProveKnob, ProveOptions, ProvePhase, ProveProgress, ProveResult, ProveVerdict } from './prove';
