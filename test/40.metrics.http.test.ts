/** The exporter's HTTP handler (lib/metrics.ts metricsRequestListener), served on loopback: no tracer, no root. */
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { RET_PF_6_1, StaleFaultDetector } from '../lib/detector';
import { FaultMetrics, metricsRequestListener } from '../lib/metrics';
import { stuckSignExtension } from './helpers/scenarios';

describe('40 metrics: the HTTP endpoint', () => {
  let server: http.Server;
  let port: number;

  before(async () => {
    const detector = new StaleFaultDetector({ retPf: RET_PF_6_1 });
    detector.push(stuckSignExtension(1500));
    const metrics = new FaultMetrics({
      detector,
      tracerStats: () => ({ submitted: 1500, dropped: 0, bpfStatsEnabled: false, programs: [], stream: null }),
      kernel: { release: '6.1.0', affected: true },
      mode: 'kprobe',
    });
    server = http.createServer(metricsRequestListener(metrics.registry));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as AddressInfo).port;
  });
  after(() => new Promise<void>((resolve) => server.close(() => resolve())));

  function request(method: string, path: string) {
    return new Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }>((resolve, reject) => {
      http.request({ host: '127.0.0.1', port, path, method }, (res) => {
        let body = '';
        res.setEncoding('utf8').on('data', (d: string) => (body += d)).on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
      }).on('error', reject).end();
    });
  }

  it('GET /metrics, / and with a query string: 200, Prometheus text', async () => {
    for (const path of ['/metrics', '/', '/metrics?x=1', '/metrics?', '/?a=b&c', '/metrics#frag']) {
      const r = await request('GET', path);
      assert.equal(r.status, 200, path);
      assert.match(String(r.headers['content-type']), /^text\/plain; version=0\.0\.4/);
      assert.match(r.body, /^kvmfault_stuck_vcpus 1$/m, path);
      assert.equal(Number(r.headers['content-length']), Buffer.byteLength(r.body));
    }
  });

  it('HEAD /metrics (and with a query): 200 with the headers and no body', async () => {
    const get = await request('GET', '/metrics');
    for (const path of ['/metrics', '/metrics?x=1']) {
      const r = await request('HEAD', path);
      assert.equal(r.status, 200, path);
      assert.match(String(r.headers['content-type']), /^text\/plain; version=0\.0\.4/);
      assert.equal(r.body, '');
      assert.ok(Math.abs(Number(r.headers['content-length']) - Buffer.byteLength(get.body)) < 64, 'the length GET would send');
    }
  });

  it('other paths 404, other methods 405 with Allow', async () => {
    for (const path of ['/metricsx', '/foo?metrics', '/metrics/']) assert.equal((await request('GET', path)).status, 404, path);
    const r = await request('POST', '/metrics?x=1');
    assert.equal(r.status, 405);
    assert.equal(r.headers.allow, 'GET, HEAD');
  });
});
