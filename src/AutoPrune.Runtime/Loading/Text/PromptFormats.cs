using AutoPrune.Loading;
using AutoPrune.Models.Llava;
using System.Text;
using System.Text.Json;

namespace AutoPrune
{
    /// <summary>How a conversation is written into the prompt text (the checkpoint family's chat format).</summary>
    public enum PromptFormat
    {
        /// <summary>Chosen from the checkpoint: its chat template, else its text model type (llama: Vicuna, mistral: Mistral).</summary>
        Auto,

        /// <summary>LLaVA-1.5 and LLaVA-1.6 Vicuna: <c>USER: &lt;image&gt;\n{q} ASSISTANT: {a}&lt;/s&gt;USER: {q2} ASSISTANT:</c>.</summary>
        Vicuna,

        /// <summary>LLaVA-1.6 Mistral: <c>[INST] &lt;image&gt;\n{q} [/INST] {a}&lt;/s&gt;[INST] {q2} [/INST]</c>.</summary>
        Mistral,
    }
}

namespace AutoPrune.Loading.Text
{
    /// <summary>Writes conversations in a <see cref="PromptFormat"/>, and finds a checkpoint's format.</summary>
    internal static class PromptFormats
    {
        /// <summary>Files that may hold a chat template, in the order they are read.</summary>
        internal static readonly string[] TemplateFiles = ["chat_template.json", "chat_template.jinja", "processor_config.json", "tokenizer_config.json"];

        /// <summary>Chat formats recognised in a template but not written here (llava-v1.6-34b is ChatML, llama3-llava-next Llama 3).</summary>
        private static readonly (string Marker, string Name)[] UnsupportedTemplates = [("<|im_start|>", "ChatML"), ("<|start_header_id|>", "the Llama 3 format")];

        /// <summary>
        /// The prompt text of a conversation. Roles: <c>system</c> (first only), <c>user</c>, <c>assistant</c>. When the
        /// last turn is the user's, the text ends where the model's answer starts.
        /// </summary>
        /// <remarks>
        /// A user turn's <c>&lt;image&gt;</c> placeholders go where the checkpoint family's chat template puts a message's
        /// images: first, each followed by a newline, then the turn's text (<see cref="ImagesFirst"/>). Hugging Face's llava
        /// and llava-next templates render a message's images before its text whatever the order of its parts, so
        /// <c>[text, image]</c> and <c>[image, text]</c> give the same prompt on every surface.
        /// </remarks>
        public static string Format(PromptFormat format, IReadOnlyList<(string Role, string Text)> turns, string eosToken = "</s>")
        {
            ArgumentNullException.ThrowIfNull(turns);
            var placed = turns.Select(t => string.Equals(t.Role, "user", StringComparison.OrdinalIgnoreCase) ? (t.Role, ImagesFirst(t.Text)) : t).ToList();
            return format switch
            {
                PromptFormat.Vicuna => LlavaTokenizer.FormatConversation(placed, imageCount: 0, eosToken: eosToken),
                PromptFormat.Mistral => Mistral(placed, eosToken),
                _ => throw new ArgumentOutOfRangeException(nameof(format), format, "A concrete prompt format is needed (Vicuna or Mistral)."),
            };
        }

        /// <summary>
        /// A user turn's text with its <c>&lt;image&gt;</c> placeholders moved to the start, each followed by a newline, in
        /// their order: <c>"q\n&lt;image&gt;"</c> and <c>"&lt;image&gt;\nq"</c> both become <c>"&lt;image&gt;\nq"</c>. The
        /// separator next to a placeholder (the newline the adapters write between an image and its text, else a space that
        /// would be doubled) is removed with it. A text without a placeholder is returned as it is.
        /// </summary>
        internal static string ImagesFirst(string text)
        {
            ArgumentNullException.ThrowIfNull(text);
            const string image = Prompting.ImagePlaceholder;
            int at = text.IndexOf(image, StringComparison.Ordinal);
            if (at < 0) return text;
            var rest = new StringBuilder(text.Length);
            int count = 0, i = 0;
            while (at >= 0)
            {
                rest.Append(text, i, at - i);
                count++;
                i = at + image.Length;
                if (i < text.Length && text[i] == '\n') i++;                                      // "<image>\n" before text
                else if (rest.Length > 0 && rest[^1] == '\n') rest.Length--;                     // "text\n<image>"
                else if (rest.Length > 0 && rest[^1] == ' ' && (i == text.Length || text[i] == ' ')) rest.Length--; // "a <image> b"
                else if (rest.Length == 0 && i < text.Length && text[i] == ' ') i++;              // "<image> text"
                at = text.IndexOf(image, i, StringComparison.Ordinal);
            }
            rest.Append(text, i, text.Length - i);
            var sb = new StringBuilder(count * (image.Length + 1) + rest.Length);
            for (int k = 0; k < count; k++) sb.Append(image).Append('\n');
            return sb.Append(rest).ToString();
        }

        /// <summary>
        /// Mistral-Instruct's format as LLaVA-1.6 Mistral uses it: each user turn is <c>[INST] {text} [/INST]</c>, each
        /// assistant turn <c> {text}&lt;/s&gt;</c>. A system text goes first inside the first <c>[INST]</c>, followed by
        /// a blank line (Mistral has no system role). The single-turn case is exactly <c>[INST] &lt;image&gt;\n{q} [/INST]</c>.
        /// </summary>
        public static string Mistral(IReadOnlyList<(string Role, string Text)> turns, string eosToken = "</s>")
        {
            ArgumentNullException.ThrowIfNull(turns);
            var sb = new StringBuilder();
            string? system = null;
            int start = 0;
            if (turns.Count > 0 && string.Equals(turns[0].Role, "system", StringComparison.OrdinalIgnoreCase))
            {
                system = turns[0].Text;
                start = 1;
            }
            for (int i = start; i < turns.Count; i++)
            {
                var (role, text) = turns[i];
                if (string.Equals(role, "user", StringComparison.OrdinalIgnoreCase))
                {
                    sb.Append("[INST] ");
                    if (!string.IsNullOrEmpty(system)) { sb.Append(system).Append("\n\n"); system = null; }
                    sb.Append(text).Append(" [/INST]");
                }
                else if (string.Equals(role, "assistant", StringComparison.OrdinalIgnoreCase))
                {
                    sb.Append(' ').Append(text).Append(eosToken);
                }
                else
                {
                    throw new ArgumentException($"Unknown role '{role}' at turn {i}: expected user or assistant (system only first).", nameof(turns));
                }
            }
            return sb.ToString();
        }

        /// <summary>
        /// The format of a checkpoint folder: from its chat template when one names a format (<c>[INST]</c> is Mistral's),
        /// else from the text model type (llama: Vicuna, mistral: Mistral).
        /// </summary>
        /// <exception cref="ModelLoadException">A chat template in a format this runtime does not write (ChatML, as in
        /// llava-v1.6-34b); <see cref="ModelOptions.PromptFormat"/> overrides the detection.</exception>
        public static PromptFormat Detect(string folder, LlavaConfig config, InputFileLimits? limits = null)
        {
            ArgumentNullException.ThrowIfNull(config);
            foreach (var file in TemplateFiles)
            {
                string path = Path.Combine(folder, file);
                if (ReadTemplate(path, limits) is not { } template) continue;
                if (template.Contains("[INST]", StringComparison.Ordinal)) return PromptFormat.Mistral;
                foreach (var (marker, name) in UnsupportedTemplates)
                    if (template.Contains(marker, StringComparison.Ordinal))
                        throw new ModelLoadException(
                            $"The chat template in '{path}' is {name} ({marker}), which this runtime does not write; supported are the Vicuna and Mistral formats. " +
                            "Set ModelOptions.PromptFormat to use one of them anyway.", path);
                // Vicuna: written out, or as llava-hf writes it (role.upper() + ': ').
                if (template.Contains("USER:", StringComparison.Ordinal) || template.Contains(".upper()", StringComparison.Ordinal))
                    return PromptFormat.Vicuna;
            }
            return config.TextConfig.IsMistral ? PromptFormat.Mistral : PromptFormat.Vicuna;
        }

        /// <summary>The chat template a file holds (a .jinja file's text, or a JSON file's <c>chat_template</c>: a string or named templates), or null.</summary>
        private static string? ReadTemplate(string path, InputFileLimits? limits)
        {
            if (!File.Exists(path)) return null;
            // A FIFO, a device or a file over the limit is a ModelLoadException naming it, not a silent fallback.
            var bytes = AutoPrune.Loading.ModelFiles.ReadBytes(path, (limits ?? new()).ConfigBytes, "ModelOptions.FileLimits.ConfigBytes");
            try
            {
                if (path.EndsWith(".jinja", StringComparison.Ordinal)) return new UTF8Encoding(false).GetString(bytes.AsSpan(bytes.AsSpan().StartsWith(Encoding.UTF8.Preamble) ? 3 : 0));
                using var doc = JsonDocument.Parse(bytes);
                if (doc.RootElement.ValueKind != JsonValueKind.Object || !doc.RootElement.TryGetProperty("chat_template", out var t)) return null;
                return t.ValueKind switch
                {
                    JsonValueKind.String => t.GetString(),
                    JsonValueKind.Array => string.Join("\n", t.EnumerateArray()
                        .Where(e => e.ValueKind == JsonValueKind.Object && e.TryGetProperty("template", out var x) && x.ValueKind == JsonValueKind.String)
                        .Select(e => e.GetProperty("template").GetString())),
                    _ => null,
                };
            }
            catch (Exception e) when (e is JsonException or IOException or UnauthorizedAccessException)
            {
                return null; // such a file is reported (or not needed) by the loader that owns it
            }
        }
    }
}
