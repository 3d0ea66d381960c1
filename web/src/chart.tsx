/** One live uPlot chart: x is the round, one series; redrawn with new data, never re-created. */
import { useEffect, useRef } from 'preact/hooks';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';

export const CHART_HEIGHT_PX = 160;
/** Narrowest a chart is drawn (a narrow window still shows an axis and a line). */
const MIN_CHART_WIDTH_PX = 220;
const ROUND_TICK_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000];

export function RoundChart(props: { title: string; label: string; xs: readonly number[]; ys: readonly number[]; format: (v: number) => string; color: string }) {
  const host = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  useEffect(() => {
    const el = host.current;
    if (el === null) return;
    const width = (): number => Math.max(MIN_CHART_WIDTH_PX, el.clientWidth);
    const u = new uPlot({
      width: width(), height: CHART_HEIGHT_PX, title: props.title,
      scales: { x: { time: false } },
      // Rounds are whole numbers: ticks at whole steps only.
      axes: [{ label: 'round', incrs: ROUND_TICK_STEPS }, { values: (_u, splits) => splits.map((v) => props.format(v)), size: 80 }],
      series: [{ label: 'round' }, { label: props.label, stroke: props.color, width: 2, points: { show: true, size: 6 }, value: (_u, v) => (v === null ? '—' : props.format(v)) }],
    }, [[...props.xs], [...props.ys]], el);
    plot.current = u;
    const ro = new ResizeObserver(() => { u.setSize({ width: width(), height: CHART_HEIGHT_PX }); });
    ro.observe(el);
    return () => { ro.disconnect(); u.destroy(); plot.current = null; };
    // Created once; data changes go through setData below.
  }, []);
  useEffect(() => { plot.current?.setData([[...props.xs], [...props.ys]]); }, [props.xs, props.ys]);
  return <figure class="chart" aria-label={`${props.title} per round`} data-series={props.label} data-points={props.xs.length}><div ref={host} /></figure>;
}
