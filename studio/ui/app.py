"""The studio's page: three tabs wired to the handlers in :mod:`studio.ui.handlers`.

``build()`` returns the ``gr.Blocks`` (nothing is loaded until an event needs it); ``launch()``
serves it offline-safe: analytics off, system fonts only (no font or script from the internet),
no share link, monitoring/MCP/SSR off, and the web server may serve files only from the work
folder (sessions' outputs) besides its own upload cache.

Queue: heavy events (predict, preview, render, compare, the one-step dub) share one concurrency
group of ``STUDIO_HEAVY_JOBS`` (default 1) workers; training jobs (make-subject, ablation) another
of 1; light events (sliders, frame changes) run alongside them.
"""

from __future__ import annotations

import logging
import os
import threading
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

log = logging.getLogger(__name__)

# the Dub tab's steps, one line each
STEPS = (
    "**1 · Speech**: upload or record the new speech; it is checked as soon as it arrives.",
    "**2 · Footage**: the subject (a person the studio knows) and the template clip whose head motion is "
    "kept, or a video of the same person.",
    "**3 · Predict**: the network draws the mouth and jaw for the speech (orange, over the template's cyan).",
    "4 · Adjust: edits, applied on release (no re-run of the network)",
    "5 · Render: a frame, a range, or the whole clip with the speech",
)

SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "Helvetica", "Arial", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]
CSS = """
#overlay img { image-rendering: auto; }
.pca-row { gap: 4px !important; }
"""


def heavy_limit() -> int:
    return max(1, int(os.environ.get("STUDIO_HEAVY_JOBS", "1")))


def build():
    """The studio as a ``gr.Blocks`` (not launched)."""
    import gradio as gr

    from studio.edits import RANGES
    from studio.face.layout import PCA_DIM
    from studio.subject import ALL_VARIANTS, VARIANT_LABELS
    from studio.ui import ablations as ablation_view
    from studio.ui import handlers as h
    from studio.ui.session import DubState, drop_session, sample_speeches

    subjects = h.subject_choices()
    first = subjects[0][1] if subjects else None
    clips, trained = _initial_choices(first)
    speeches = sample_speeches(first)
    heavy = {"concurrency_id": "heavy", "concurrency_limit": heavy_limit()}
    training = {"concurrency_id": "training", "concurrency_limit": 1}
    light = {"trigger_mode": "always_last", "show_progress": "hidden"}
    all_variants = [(VARIANT_LABELS[v], v) for v in ALL_VARIANTS]

    with gr.Blocks(title="Lip Sync Studio", analytics_enabled=False) as demo:
        state = gr.State(DubState.new, delete_callback=drop_session)
        playing = gr.State(False)
        gr.Markdown("## Lip Sync Studio\nRe-time a talking head's mouth and jaw to new speech "
                    "(pose-adaptive cascaded TCN, Zheng et al., ICASSP 2021).")
        with gr.Tabs():
            # ---------------------------------------------------------------- Dub
            with gr.Tab("Dub", id="dub"):
                with gr.Accordion("One step: any video + speech", open=True, elem_id="one_step"):
                    gr.Markdown("Dub a video of anyone talking, without building a subject first. The first dub "
                                "of a video builds its subject (the multi-speaker prior, fine-tuned on the video's "
                                "own speech: seconds to minutes on a CPU, by the video's length); it is cached, so "
                                "later dubs of the same video start at once. Then the subject is picked below, for "
                                "edits.")
                    with gr.Row():
                        one_video = gr.Video(label="Video of one person talking", sources=["upload"], height=240,
                                             elem_id="one_step_video")
                        one_speech = gr.Audio(value=speeches[0] if speeches else None,
                                              sources=["upload", "microphone"], type="filepath",
                                              label="Speech to dub it with (wav, mp3, m4a)", elem_id="one_step_speech")
                        one_result = gr.Video(label="Dubbed video", height=240, interactive=False,
                                              elem_id="one_step_result")
                    with gr.Row():
                        one_btn = gr.Button("Dub this video", variant="primary", elem_id="dub_video", scale=3)
                        one_cancel = gr.Button("Cancel", variant="stop", elem_id="one_step_cancel", scale=1)
                    one_status = gr.Markdown(elem_id="one_step_status")
                gr.Markdown("Or step by step, with edits: **1** speech, **2** footage, **3** predict, **4** adjust, "
                            "**5** render.", elem_id="dub_steps")
                with gr.Row():
                    with gr.Column(scale=1, min_width=300):
                        gr.Markdown(STEPS[0], elem_classes="step")
                        speech = gr.Audio(value=speeches[0] if speeches else None, sources=["upload", "microphone"],
                                          type="filepath", label="Speech (wav, mp3, m4a)", elem_id="speech")
                        gr.Markdown(STEPS[1], elem_classes="step")
                        subject = gr.Dropdown(subjects, value=first, label="Subject", elem_id="subject",
                                              allow_custom_value=True)
                        subject_md = gr.Markdown()
                        template_clip = gr.Dropdown(clips, value=clips[0] if clips else None, allow_custom_value=True,
                                                    label="Template clip of the subject", elem_id="template")
                        template_upload = gr.Video(label="... or upload a template video", sources=["upload"],
                                                   elem_id="template_upload",
                                                   height=160)
                        with gr.Row():
                            variant = gr.Dropdown(trained, value="ours" if ("Ours", "ours") in trained else None,
                                                  allow_custom_value=True, label="Mapping model", elem_id="variant")
                            renderer = gr.Radio(["retrieval"], value="retrieval", label="Renderer")
                        gr.Markdown(STEPS[2], elem_classes="step")
                        predict_btn = gr.Button("Predict", variant="primary", elem_id="predict")
                        summary = gr.Markdown(elem_id="summary")
                    with gr.Column(scale=2):
                        overlay = gr.Image(label="Landmarks: predicted (orange) over the template's own (cyan)",
                                           type="numpy", format="jpeg", height=400, interactive=False,
                                           elem_id="overlay")
                        with gr.Row():
                            frame = gr.Slider(0, 1, value=0, step=1, label="Frame", elem_id="frame", scale=5)
                            play_btn = gr.Button("Step through", scale=1, min_width=80, elem_id="play")
                            play_sound_btn = gr.Button("Play with speech", scale=1, min_width=80,
                                                       elem_id="play_sound")
                        landmark_player = gr.Video(label="Landmarks at the clip's frame rate, with the speech",
                                                   autoplay=True, height=300, interactive=False,
                                                   elem_id="landmark_player")
                        timeline_plot = gr.Plot(label="Timeline (grey: silence, red: current frame)",
                                                elem_id="timeline")
                with gr.Accordion(STEPS[3], open=True):
                    with gr.Row():
                        reset_btn = gr.Button("Reset edits", size="sm")
                        save_btn = gr.Button("Save edits", size="sm")
                        load_btn = gr.UploadButton("Load edits", file_types=[".json"], size="sm")
                        edits_file = gr.DownloadButton("Download edits.json", size="sm", elem_id="edits_file")
                    lo, hi = RANGES["pca_offsets"]
                    pca = []
                    gr.Markdown("Mouth PCA offsets (in standard deviations of each coefficient)")
                    for row in range(0, PCA_DIM, 7):
                        with gr.Row(elem_classes="pca-row"):
                            for k in range(row, min(PCA_DIM, row + 7)):
                                pca.append(gr.Slider(lo, hi, value=0.0, step=0.05, label=f"PC{k + 1}",
                                                     elem_id=f"pc{k + 1}", min_width=110))
                    with gr.Row():
                        mouth_gain = gr.Slider(*RANGES["mouth_open_gain"], value=1.0, step=0.05,
                                               label="Mouth opening gain")
                        jaw_gain = gr.Slider(*RANGES["jaw_open_gain"], value=1.0, step=0.05, label="Jaw opening gain")
                        jaw_offset = gr.Slider(*RANGES["jaw_open_offset"], value=0.0, step=0.01,
                                               label="Jaw opening offset (face scales)")
                        jaw_smooth = gr.Slider(*RANGES["jawline_smoothing"], value=0.0, step=0.1,
                                               label="Jaw line smoothing (points)")
                        time_smooth = gr.Slider(*RANGES["temporal_smoothing"], value=0.0, step=0.25,
                                                label="Temporal smoothing (frames)")
                        lip_timing = gr.Slider(*RANGES["lip_timing"], value=0.0, step=0.25,
                                               label="Lip timing (frames; + = earlier)", elem_id="lip_timing")
                    with gr.Row():
                        close_silence = gr.Checkbox(False, label="Close the mouth in silence")
                        silence_db = gr.Slider(*RANGES["silence_threshold"], value=30.0, step=1,
                                               label="Silence threshold (dB below speech)")
                        range_on = gr.Checkbox(False, label="Only frames")
                        range_start = gr.Slider(0, 1, value=0, step=1, label="from")
                        range_end = gr.Slider(0, 1, value=1, step=1, label="to (exclusive)")
                controls = [*pca, mouth_gain, jaw_gain, jaw_offset, jaw_smooth, time_smooth, lip_timing,
                            close_silence, silence_db, range_on, range_start, range_end]
                with gr.Accordion("Facial map (what the renderer sees)", open=False):
                    with gr.Row():
                        canny_low = gr.Slider(0, 255, value=50, step=1, label="Canny low threshold")
                        canny_high = gr.Slider(0, 255, value=150, step=1, label="Canny high threshold")
                        map_btn = gr.Button("Show facial map", size="sm")
                    facemap_img = gr.Image(label="Facial map of the current frame", type="numpy", format="png",
                                           height=300, interactive=False, elem_id="facemap")
                with gr.Accordion(STEPS[4], open=True):
                    with gr.Row():
                        preview_btn = gr.Button("Preview frame", elem_id="preview")
                        r_start = gr.Number(0, precision=0, label="range from", min_width=90)
                        r_stop = gr.Number(h.SHORT_RANGE_FRAMES, precision=0, label="to", min_width=90)
                        range_btn = gr.Button("Render range", elem_id="render_range")
                        quality = gr.Radio([("Standard", "standard"), ("High (delivery)", "high")],
                                           value="standard", label="Output quality", elem_id="quality",
                                           min_width=160)
                        full_btn = gr.Button("Render full clip", variant="primary", elem_id="render")
                        cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel")
                    with gr.Row():
                        preview_img = gr.Image(label="Rendered frame", type="numpy", format="png", height=300,
                                               interactive=False, elem_id="preview_img")
                        video = gr.Video(label="Dubbed video", height=300, interactive=False, elem_id="video")
                    with gr.Row():
                        video_file = gr.DownloadButton("Download video", size="sm", elem_id="video_file")
                        csv_btn = gr.Button("Make landmarks CSV", size="sm")
                        csv_file = gr.DownloadButton("Download landmarks CSV", size="sm", elem_id="csv_file")

            # ---------------------------------------------------------------- Subject
            with gr.Tab("Subject", id="subject_tab"):
                gr.Markdown("Upload footage of one person speaking (one or more videos with sound). The studio "
                            "tracks the face, fits the mouth PCA, trains the mapping model(s) and builds the "
                            "retrieval renderer's pool; the subject is saved and appears in the dropdowns. "
                            "Cancel stops the job; Build with the same name resumes it.")
                with gr.Row():
                    with gr.Column():
                        s_files = gr.File(file_count="multiple", file_types=["video"], label="Footage", elem_id="footage")
                        s_speech = gr.File(file_count="multiple", file_types=["audio"], elem_id="footage_speech",
                                           label="Speech for footage without sound (optional: one file per video, "
                                                 "named like it or in the same order)")
                        s_name = gr.Textbox(label="Subject name", placeholder="e.g. anna", elem_id="subject_name")
                        s_variants = gr.CheckboxGroup(all_variants, value=["ours"], label="Mapping models to train")
                        with gr.Row():
                            s_neural = gr.Checkbox(False, label="Also train the neural renderer (slow on CPU)")
                            s_steps = gr.Number(2000, precision=0, label="neural renderer steps")
                        with gr.Row():
                            build_btn = gr.Button("Build subject", variant="primary", elem_id="build")
                            s_cancel = gr.Button("Cancel", variant="stop")
                    with gr.Column():
                        s_status = gr.Markdown(elem_id="build_status")
                        s_loss = gr.Plot(label="Training loss")
                        gr.Markdown(
                            "Solid: the loss on the footage the model trains on. Dotted: the loss on the "
                            "last part of each clip, held out. The model kept is the epoch where the dotted "
                            "curve is lowest. For *Ours*, training starts from the multi-speaker prior, and "
                            "the prior itself stays the answer unless training beats it there. With a few "
                            "seconds of footage the held-out part is short and speaks other words, so its "
                            "loss can sit far above the training loss: that says how hard new speech is, "
                            "not that training failed.", elem_id="loss_help")
                        s_sample = gr.Image(label="Neural renderer samples (map | output | real)", type="filepath",
                                            interactive=False, height=200)

            # ---------------------------------------------------------------- Ablations
            with gr.Tab("Ablations", id="ablations") as ablations_tab:
                with gr.Row():
                    a_subject = gr.Dropdown(subjects, value=first, label="Subject", allow_custom_value=True)
                    a_variants = gr.CheckboxGroup(all_variants, value=list(ALL_VARIANTS), label="Variants")
                with gr.Row():
                    a_seeds = gr.Number(3, precision=0, label="seeds", min_width=80)
                    a_epochs = gr.Number(0, precision=0, label="max epochs (0: the preset's)", min_width=80)
                    a_show = gr.Button("Show results")
                    a_run = gr.Button("Run ablation", variant="primary")
                    a_cancel = gr.Button("Cancel", variant="stop")
                a_estimate = gr.Markdown(elem_id="ablation_estimate")
                a_note = gr.Markdown(elem_id="ablation_note")
                a_table = gr.Dataframe(headers=ablation_view.HEADERS, label="Table 1 (mean ± std over seeds)",
                                       interactive=False, wrap=True, column_widths=ablation_view.COLUMN_WIDTHS,
                                       max_height=900, elem_id="ablation_table")
                gr.Markdown(ablation_view.LEGEND, elem_id="ablation_legend")
                a_fig = gr.Plot(label="Table 1 as bars (error bars: std over seeds)")
                with gr.Accordion("A new person from one short clip: the multi-speaker prior, "
                                  "leave-one-speaker-out", open=False):
                    gr.Markdown(h.loso_results(), elem_id="loso_table")
                gr.Markdown("### Side by side\nThe same speech driven by several variants, on one template.")
                with gr.Row():
                    c_speech = gr.Audio(value=speeches[0] if speeches else None, sources=["upload"],
                                        type="filepath", label="Speech")
                    with gr.Column():
                        c_template = gr.Dropdown(clips, value=clips[0] if clips else None, allow_custom_value=True,
                                                 label="Template clip")
                        c_variants = gr.CheckboxGroup(all_variants, value=[v for _, v in trained][:2],
                                                      label="Variants (trained ones)")
                        c_render = gr.Checkbox(False, label="Also render the clips (slower)")
                        c_btn = gr.Button("Compare", variant="primary", elem_id="compare")
                with gr.Row():
                    c_overlay = gr.Video(label="Predicted landmarks, side by side", interactive=False,
                                         elem_id="compare_overlay")
                    c_rendered = gr.Video(label="Rendered, side by side", interactive=False)

        timer = gr.Timer(0.12, active=False)
        subjects_shown = gr.State(None)
        subject_poll = gr.Timer(h.SUBJECT_POLL_SECONDS)

        # ---------------------------------------------------------------- wiring
        subject_outputs = [template_clip, variant, renderer, subject_md]
        # the subject lists come from disk on every page load: subjects built since the server
        # started (in this session or another) are offered after a reload
        demo.load(h.refresh_subjects, [subject, state], [subject], api_name="load_subjects",
                  show_progress="hidden").then(
            h.subject_info, [subject, state], subject_outputs, api_name="init", show_progress="hidden")
        demo.load(h.refresh_subjects, [a_subject], [a_subject], api_name="load_ablation_subjects",
                  show_progress="hidden")
        # ... and while the page is open, from a light poll (a build in another session shows up)
        subject_poll.tick(h.poll_subjects, [subjects_shown, state], [subject, a_subject, subjects_shown],
                          api_name="poll_subjects", **light)
        subject.input(h.subject_info, [subject, state], subject_outputs, api_name="subject_info")
        one_evt = one_btn.click(h.dub_video, [state, one_video, one_speech],
                                [state, one_result, one_status, subject, speech], api_name="dub_video", **heavy)
        one_evt.success(h.subject_info, [subject, state], subject_outputs, api_name="one_step_subject_info")
        one_cancel.click(h.cancel, [state], None, cancels=[one_evt], api_name="cancel_dub_video")
        gr.on([subject.change, template_clip.change, template_upload.change, variant.change],
              h.inputs_changed, [state], [state, summary], api_name="inputs_changed", show_progress="hidden")
        speech.change(h.speech_changed, [state, speech], [state, summary], api_name="speech_changed",
                      show_progress="hidden")
        predict_btn.click(h.predict, [state, subject, speech, template_clip, template_upload, variant],
                          [state, frame, overlay, timeline_plot, summary], api_name="predict", **heavy).then(
            h.frame_range_limits, [state], [range_start, range_end], api_name="frame_range_limits")
        frame.release(h.show_frame, [state, frame], [overlay], api_name="show_frame", **light).then(
            h.timeline_view, [state, frame], [timeline_plot], api_name="timeline", **light)
        play_btn.click(h.toggle_play, [playing], [playing, timer, play_btn], api_name="toggle_play")
        play_sound_btn.click(h.landmark_video, [state], [landmark_player], api_name="landmark_video", **heavy)
        timer.tick(h.play_tick, [state, frame], [frame, overlay], api_name="play_tick", **light)
        edit_triggers = [c.release for c in controls if isinstance(c, gr.Slider)] + [
            c.input for c in controls if isinstance(c, gr.Checkbox)]
        gr.on(edit_triggers, h.edit, [state, frame, *controls], [state, overlay], api_name="edit", **light).then(
            h.timeline_view, [state, frame], [timeline_plot], api_name="edit_timeline", **light)
        reset_btn.click(h.reset_edits, [state, frame], [state, *controls, overlay, timeline_plot],
                        api_name="reset_edits")
        save_btn.click(h.save_edits, [state], [edits_file], api_name="save_edits")
        load_btn.upload(h.load_edits, [state, frame, load_btn], [state, *controls, overlay, timeline_plot],
                        api_name="load_edits")
        gr.on([map_btn.click, canny_low.release, canny_high.release], h.facemap,
              [state, frame, canny_low, canny_high, renderer], [facemap_img], api_name="facemap")
        preview_evt = preview_btn.click(h.preview_frame, [state, frame, renderer, canny_low, canny_high],
                                        [preview_img], api_name="preview_frame", **heavy)
        range_evt = range_btn.click(h.render_range, [state, r_start, r_stop, renderer, canny_low, canny_high],
                                    [video], api_name="render_range", **heavy)
        full_evt = full_btn.click(h.render_full, [state, renderer, canny_low, canny_high, quality],
                                  [state, video, video_file, csv_file], api_name="render", **heavy)
        cancel_btn.click(h.cancel, [state], None, cancels=[preview_evt, range_evt, full_evt], api_name="cancel")
        csv_btn.click(h.download_landmarks, [state], [csv_file], api_name="landmarks_csv")

        build_evt = build_btn.click(h.build_subject, [state, s_files, s_name, s_variants, s_neural, s_steps, s_speech],
                                    [s_status, s_loss, s_sample, subject], api_name="build_subject", **training)
        build_evt.then(h.refresh_subjects, [a_subject], [a_subject], api_name="refresh_subjects")
        # the Dub tab's description, template clips and models follow the subject just built
        build_evt.success(h.subject_info, [subject, state], subject_outputs, api_name="built_subject_info",
                          show_progress="hidden")
        s_cancel.click(h.cancel, [state], None, api_name="cancel_job")

        ablation_outputs = [a_table, a_fig, a_note, c_template, c_variants]
        ablations_tab.select(h.ablation_subject, [a_subject, state], ablation_outputs, api_name="init_ablations",
                             show_progress="hidden")
        a_subject.input(h.ablation_subject, [a_subject, state], ablation_outputs, api_name="ablation_subject")
        # the run's cost is on screen before Run is pressed, and follows the settings
        gr.on([ablations_tab.select, a_subject.change, a_variants.change, a_seeds.change, a_epochs.change],
              h.ablation_estimate, [a_subject, a_variants, a_seeds, a_epochs], [a_estimate],
              api_name="ablation_estimate", show_progress="hidden")
        a_show.click(h.ablation_results, [a_subject, a_variants, state], [a_table, a_fig, a_note],
                     api_name="ablation_results")
        a_run.click(h.run_ablation, [state, a_subject, a_variants, a_seeds, a_epochs], [a_table, a_fig, a_note],
                    api_name="run_ablation", **training)
        a_cancel.click(h.cancel, [state], None, api_name="cancel_ablation")
        c_btn.click(h.compare_variants, [state, a_subject, c_speech, c_template, c_variants, c_render],
                    [c_overlay, c_rendered], api_name="compare", **heavy)
    return demo


def _initial_choices(subject_dir: str | None) -> tuple[list[str], list[tuple[str, str]]]:
    """(template clips, trained variants) of the preselected subject, for the page as first served."""
    from studio.subject import ALL_VARIANTS, VARIANT_LABELS, Subject

    if not subject_dir:
        return [], []
    try:
        m = Subject.load(subject_dir).manifest
    except Exception:  # shown by the load event's handler instead
        return [], []
    return list(m.clips), [(VARIANT_LABELS[v], v) for v in ALL_VARIANTS if v in m.variants]


def theme():
    import gradio as gr

    return gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS)


def launch_kwargs(**overrides) -> dict:
    """Arguments for ``Blocks.launch``: offline-safe, local, narrow file access."""
    from studio.ui.session import get_pipeline, work_dir

    # Only the sessions' outputs: the work folder also holds other users' uploaded templates'
    # caches (pipeline.work_dir/templates), which must not be fetchable by URL.
    outputs = work_dir() / "sessions"
    outputs.mkdir(parents=True, exist_ok=True)
    limits = get_pipeline().config.limits
    kw = dict(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        share=False,
        allowed_paths=[str(outputs)],
        footer_links=["api"],
        enable_monitoring=False,
        mcp_server=False,
        ssr_mode=False,
        pwa=False,
        run_history=False,
        max_file_size=int(limits.max_file_mb * 1e6),  # refused by gradio before it is stored
        theme=theme(),
        css=CSS,
        quiet=False,  # `python app.py` prints the URL
    )
    kw.update(overrides)
    return kw


def warm_up() -> None:
    """Load what the first visitor would otherwise wait for: the pipeline, the preselected
    subject and its 'ours' model (torch), pandas and plotly. Errors are only logged: the
    handlers report them properly when a user gets there."""
    t0 = time.perf_counter()
    try:
        from studio.ui import handlers as h
        from studio.ui.session import discover_subjects, get_pipeline

        entries = discover_subjects()
        pipe = get_pipeline()
        if entries:
            subject = pipe.subject(entries[0].path)
            if "ours" in subject.manifest.variants:
                pipe.mapping(subject, "ours")
        import pandas  # noqa: F401
        import plotly.graph_objects  # noqa: F401

        import studio.train.ablate  # noqa: F401
        del h
    except Exception as exc:
        log.warning("warm-up failed (the studio still works; the first request will be slower): %s", exc)
    log.info("studio warmed up in %.1f s", time.perf_counter() - t0)


def launch(*, warm: bool = True, **overrides):
    """Build the studio and serve it; blocks unless ``prevent_thread_lock=True`` is passed. Returns
    the running ``gr.Blocks`` (``.local_url``, ``.close()``). ``warm``: load models in the
    background right after the server starts (:func:`warm_up`)."""
    demo = build()
    demo.queue(default_concurrency_limit=4, max_size=64)
    if warm:
        threading.Thread(target=warm_up, name="studio-warm-up", daemon=True).start()
    demo.launch(**launch_kwargs(**overrides))
    return demo
