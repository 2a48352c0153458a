/**
 * deploy/: the systemd unit (systemd-analyze verify and security), the Prometheus scrape config and
 * alert rules (promtool check config / check rules / test rules) and the Grafana dashboard
 * (structure; every series it queries is one lib/metrics.ts registers, in either mode: the counters
 * mode with --escalate, the default, and the tracer modes). No root, no KVM.
 * promtool comes from Debian's `prometheus` package, systemd-analyze from `systemd`: scripts/setup
 * installs both; a missing tool fails the test with that remedy.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import yaml from 'js-yaml';
import { counterMetricNames, faultMetricNames, registeredMetricNames, runTool, SCRAPE_SERIES, seriesNames } from './helpers/promql';

const ROOT = path.resolve(__dirname, '..', '..');
const DEPLOY = path.join(ROOT, 'deploy');
const UNIT = path.join(DEPLOY, 'systemd', 'kvmfault-metrics.service');
const PROM = path.join(DEPLOY, 'prometheus');
const DASHBOARD = path.join(DEPLOY, 'grafana', 'kvmfault-dashboard.json');

function output(r: { stdout: string; stderr: string }): string {
  return `${r.stdout}${r.stderr}`.trim();
}

function unknownSeries(expr: string, known: Set<string>): string[] {
  return seriesNames(expr).filter((n) => !known.has(n) && !SCRAPE_SERIES.has(n));
}

describe('59 deploy: systemd unit, Prometheus rules, Grafana dashboard', function () {
  this.timeout(120_000);
  let known: Set<string>;
  let dir: string;
  before(() => {
    known = registeredMetricNames();
    dir = mkdtempSync(path.join(tmpdir(), 'kvmfault-deploy-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('the registries the checks compare against are the real ones, both modes (sanity)', () => {
    const tracer = faultMetricNames();
    const counters = counterMetricNames();
    for (const n of ['kvmfault_vcpu_state', 'kvmfault_vm_seconds_to_sign_bit', 'kvmfault_kernel_affected', 'kvmfault_dropped_records_total']) {
      assert.ok(tracer.has(n), `${n} is registered by FaultMetrics`);
    }
    for (const n of ['kvmfault_kvm_pf_taken_total', 'kvmfault_kvm_pf_fixed_total', 'kvmfault_vm_suspect', 'kvmfault_counters_sample_errors_total',
      'kvmfault_escalation_verdict', 'kvmfault_escalations_total']) {
      assert.ok(counters.has(n), `${n} is registered by CounterMetrics with an Escalator`);
    }
    // the sequence gauges and the kernel gauge have the same names in both modes (the alerts rely on it)
    for (const n of ['kvmfault_vm_mmu_invalidate_seq', 'kvmfault_vm_invalidation_rate', 'kvmfault_vm_seconds_to_sign_bit', 'kvmfault_kernel_affected']) {
      assert.ok(tracer.has(n) && counters.has(n), `${n} in both modes`);
    }
    assert.equal(known.size, new Set([...tracer, ...counters]).size, 'known is the union of both registries');
    assert.deepEqual(seriesNames('sum by (state) (rate(kvmfault_vcpu_faults_total{instance=~"$instance", vm!="x"}[5m])) > 0 and on(instance) up == 1'),
      ['kvmfault_vcpu_faults_total', 'up']);
  });

  describe('systemd unit', () => {
    const text = readFileSync(UNIT, 'utf8');
    // systemd-analyze verify checks that ExecStart's program exists: the unit names the installed
    // path (npm install -g: /usr/bin/kvmfault); the copy checked here runs this clone's CLI instead
    const local = path.join(ROOT, 'dist', 'lib', 'cli', 'main.js');

    function copyWithLocalExec(name: string, edit: (t: string) => string = (t) => t): string {
      assert.match(text, /^ExecStart=\/usr\/bin\/kvmfault metrics /m, 'ExecStart runs the installed CLI');
      const file = path.join(dir, name);
      writeFileSync(file, edit(text.replace(/^ExecStart=\/usr\/bin\/kvmfault /m, `ExecStart=${process.execPath} ${local} `)));
      return file;
    }

    it('systemd-analyze verify: no errors, no warnings', () => {
      const file = copyWithLocalExec('kvmfault-metrics.service');
      const r = runTool('systemd-analyze', ['verify', file], 'systemd');
      assert.equal(r.status, 0, output(r));
      // verify exits 0 for an unknown key too (it only warns): any output is a finding
      assert.equal(output(r), '', 'systemd-analyze verify prints nothing for a clean unit');
    });

    it('the check above does catch a bad unit (an unknown key, a missing program)', () => {
      const bad = copyWithLocalExec('bad.service', (t) => t.replace('ProtectHome=yes', 'ProtectHome=yes\nProtectHomeTypo=yes'));
      assert.match(output(runTool('systemd-analyze', ['verify', bad], 'systemd')), /Unknown key 'ProtectHomeTypo'/);
      const orig = path.join(dir, 'kvmfault-metrics-installed-path.service');
      writeFileSync(orig, text);
      const r = runTool('systemd-analyze', ['verify', orig], 'systemd');
      // on a host where the package is installed globally the program exists and this passes
      if (r.status !== 0) assert.match(output(r), /\/usr\/bin\/kvmfault/);
    });

    it('counters mode with --escalate, captures in the state directory; hardened: only CAP_BPF and CAP_PERFMON, no new privileges, read-only system, exposure <= 3.0', () => {
      const directive = (k: string) => [...text.matchAll(new RegExp(`^${k}=(.*)$`, 'gm'))].map((m) => m[1].trim());
      assert.deepEqual(directive('CapabilityBoundingSet'), ['CAP_BPF CAP_PERFMON']);
      assert.deepEqual(directive('AmbientCapabilities'), ['CAP_BPF CAP_PERFMON']);
      for (const [k, v] of [['NoNewPrivileges', 'yes'], ['ProtectSystem', 'strict'], ['ProtectHome', 'yes'], ['PrivateTmp', 'yes'], ['PrivateDevices', 'yes']]) {
        assert.deepEqual(directive(k), [v], `${k}=${v}`);
      }
      assert.match(directive('SystemCallFilter')[0], /@system-service.*\bbpf\b.*\bperf_event_open\b/);
      // counters mode with --escalate; the capture files go to the one writable place, the state directory
      const exec = directive('ExecStart')[0];
      assert.match(exec, / --mode counters\b/);
      assert.match(exec, / --escalate\b/);
      const escDir = / --escalate-dir (\S+)/.exec(exec)?.[1] ?? assert.fail(`ExecStart sets --escalate-dir: ${exec}`);
      assert.deepEqual(directive('StateDirectory'), ['kvmfault']);
      assert.ok(escDir === '/var/lib/kvmfault' || escDir.startsWith('/var/lib/kvmfault/'), `--escalate-dir ${escDir} is inside StateDirectory=kvmfault`);
      assert.deepEqual(directive('ReadWritePaths'), [], 'nothing else writable');
      const file = copyWithLocalExec('kvmfault-metrics.service');
      // systemd's own score of the sandbox (0 best .. 10 worst); 30 = 3.0
      const r = runTool('systemd-analyze', ['security', '--offline=yes', '--threshold=30', '--no-pager', file], 'systemd');
      const overall = /Overall exposure level for \S+: ([\d.]+)/.exec(r.stdout);
      assert.ok(overall, `systemd-analyze security printed an exposure level: ${output(r).slice(-500)}`);
      assert.equal(r.status, 0, `exposure ${overall[1]} is above 3.0`);
    });
  });

  describe('Prometheus', () => {
    it('promtool check config (with the rule file it names)', () => {
      const r = runTool('promtool', ['check', 'config', path.join(PROM, 'prometheus.yml')], 'prometheus');
      assert.equal(r.status, 0, output(r));
      assert.match(output(r), /SUCCESS: 1 rule files found/);
    });

    it('promtool check rules', () => {
      const r = runTool('promtool', ['check', 'rules', path.join(PROM, 'kvmfault.rules.yml')], 'prometheus');
      assert.equal(r.status, 0, output(r));
      assert.match(output(r), /SUCCESS: 8 rules found/);
    });

    it('promtool test rules: each alert fires on its series and stays quiet on the others', () => {
      const r = runTool('promtool', ['test', 'rules', path.join(PROM, 'kvmfault.rules.test.yml')], 'prometheus');
      assert.equal(r.status, 0, output(r));
      assert.match(output(r), /SUCCESS/);
      // a wrong expectation does fail (so the pass above means something)
      const broken = path.join(dir, 'broken.rules.test.yml');
      const rules = path.join(dir, 'kvmfault.rules.yml');
      writeFileSync(rules, readFileSync(path.join(PROM, 'kvmfault.rules.yml')));
      writeFileSync(broken, readFileSync(path.join(PROM, 'kvmfault.rules.test.yml'), 'utf8').replace("cause: seq-sign-extension\n", "cause: invalidation-stuck\n"));
      const b = runTool('promtool', ['test', 'rules', broken], 'prometheus');
      assert.notEqual(b.status, 0, 'a wrong expected label makes promtool test rules fail');
    });

    it('the rules: the alerts the fleet needs in either mode, naming only registered metrics (and up)', () => {
      const doc = yaml.load(readFileSync(path.join(PROM, 'kvmfault.rules.yml'), 'utf8')) as { groups: { rules: { alert?: string; expr: string }[] }[] };
      const rules = doc.groups.flatMap((g) => g.rules);
      for (const r of rules) assert.deepEqual(unknownSeries(r.expr, known), [], `${r.alert}: ${r.expr}`);
      const expr = (name: string) => rules.find((r) => r.alert === name)?.expr ?? assert.fail(`alert ${name} missing`);
      assert.match(expr('KvmVcpuStuck'), /kvmfault_vcpu_state\{state="stuck"\}/);
      assert.match(expr('KvmInvalidateSeqNearSignBit'), /kvmfault_vm_seconds_to_sign_bit[\s\S]*kvmfault_kernel_affected == 1/);
      assert.match(expr('KvmfaultDroppingRecords'), /rate\(kvmfault_dropped_records_total\[/);
      assert.match(expr('KvmfaultExporterDown'), /up\{job="kvmfault"\} == 0/);
      // counters mode (the default) and its escalations
      assert.match(expr('KvmVmSuspect'), /^kvmfault_vm_suspect == 1$/);
      assert.match(expr('KvmEscalationStuck'), /kvmfault_escalation_verdict\{state="stuck"\} == 1/);
      assert.match(expr('KvmfaultCounterSamplesFailing'), /rate\(kvmfault_counters_sample_errors_total\[/);
      // and the test file covers every alert
      const tests = yaml.load(readFileSync(path.join(PROM, 'kvmfault.rules.test.yml'), 'utf8')) as { tests: { alert_rule_test: { alertname: string; exp_alerts: unknown[] }[] }[] };
      const cases = tests.tests.flatMap((t) => t.alert_rule_test);
      for (const r of rules) {
        if (!r.alert) continue;
        assert.ok(cases.some((c) => c.alertname === r.alert && c.exp_alerts.length > 0), `${r.alert} has a firing case`);
      }
    });
  });

  describe('Grafana dashboard', () => {
    interface Target { refId: string; expr: string; datasource?: { type: string; uid: string } }
    interface Panel { id: number; type: string; title: string; gridPos: { x: number; y: number; w: number; h: number }; datasource?: { type: string; uid: string }; targets?: Target[]; panels?: Panel[] }
    const dash = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as {
      schemaVersion: number; uid: string; title: string; panels: Panel[];
      templating: { list: { name: string; type: string; query: unknown; datasource?: unknown }[] };
    };
    const panels = dash.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
    const dataPanels = panels.filter((p) => p.type !== 'row');

    it('structure: schemaVersion, uid, unique panel ids, panels on the 24-column grid', () => {
      assert.equal(typeof dash.schemaVersion, 'number');
      assert.ok(dash.schemaVersion >= 36, `schemaVersion ${dash.schemaVersion} (Grafana 9+ datasource references need >= 36)`);
      assert.match(dash.uid, /^[a-zA-Z0-9_-]{1,40}$/);
      const ids = panels.map((p) => p.id);
      assert.equal(new Set(ids).size, ids.length, 'panel ids are unique');
      for (const p of panels) {
        assert.ok(p.gridPos.x >= 0 && p.gridPos.w > 0 && p.gridPos.x + p.gridPos.w <= 24 && p.gridPos.h > 0, `${p.title}: gridPos`);
      }
      assert.ok(dataPanels.length >= 8, 'the panels');
    });

    it('every panel queries the Prometheus datasource variable, each target has an expr and a refId', () => {
      const dsVar = dash.templating.list.find((v) => v.type === 'datasource');
      assert.ok(dsVar && dsVar.query === 'prometheus', 'a datasource variable of type prometheus');
      for (const p of dataPanels) {
        assert.deepEqual(p.datasource, { type: 'prometheus', uid: `\${${dsVar.name}}` }, `${p.title}: datasource`);
        assert.ok(p.targets && p.targets.length > 0, `${p.title}: targets`);
        const refs = p.targets.map((t) => t.refId);
        assert.equal(new Set(refs).size, refs.length, `${p.title}: refIds unique`);
        for (const t of p.targets) assert.ok(typeof t.expr === 'string' && t.expr.length > 0, `${p.title} ${t.refId}: expr`);
      }
    });

    it('every expr is valid PromQL (promtool check rules, each expr as a recording rule)', () => {
      const rules = dataPanels.flatMap((p) => (p.targets ?? []).map((t) => ({
        record: `panel_${p.id}_${t.refId}`,
        // dashboard variables as Grafana substitutes them
        expr: t.expr.replace(/\$\{?instance\}?/g, '.*'),
      })));
      const file = path.join(dir, 'dashboard.rules.yml');
      writeFileSync(file, yaml.dump({ groups: [{ name: 'dashboard', rules }] }));
      const r = runTool('promtool', ['check', 'rules', file], 'prometheus');
      assert.equal(r.status, 0, output(r));
      assert.match(output(r), new RegExp(`SUCCESS: ${rules.length} rules found`));
    });

    it('every expr names only series lib/metrics.ts registers in either mode (and up); the key ones are shown', () => {
      const used = new Set<string>();
      for (const p of dataPanels) {
        for (const t of p.targets ?? []) {
          assert.deepEqual(unknownSeries(t.expr, known), [], `${p.title} ${t.refId}: ${t.expr}`);
          for (const n of seriesNames(t.expr)) used.add(n);
        }
      }
      for (const v of dash.templating.list) {
        const q = typeof v.query === 'string' ? v.query : (v.query as { query?: string } | undefined)?.query;
        if (v.type === 'query' && q) {
          const m = /^label_values\((\w+),/.exec(q);
          assert.ok(m && known.has(m[1]), `variable ${v.name}: ${q}`);
          // the host picker lists hosts in either mode: its metric is one both modes register
          assert.ok(faultMetricNames().has(m[1]) && counterMetricNames().has(m[1]), `variable ${v.name}: ${m[1]} is registered in both modes`);
        }
      }
      for (const n of ['kvmfault_stuck_vcpus', 'kvmfault_vcpu_state', 'kvmfault_vm_mmu_invalidate_seq', 'kvmfault_vm_seconds_to_sign_bit',
        'kvmfault_kernel_affected', 'kvmfault_dropped_records_total', 'kvmfault_suspect_vms', 'kvmfault_vm_suspect', 'kvmfault_kvm_pf_taken_total',
        'kvmfault_kvm_pf_fixed_total', 'kvmfault_escalation_verdict', 'kvmfault_counters_sample_seconds']) assert.ok(used.has(n), `a panel shows ${n}`);
      const unused = [...known].filter((n) => !used.has(n));
      assert.deepEqual(unused, [], 'every registered metric has a panel');
    });
  });
});
