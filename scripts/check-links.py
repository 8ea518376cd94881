#!/usr/bin/env python3
"""Check every relative markdown link [..](path#anchor) / [..](#anchor) in the repo's
own .md files: the file exists and the anchor is a heading (GitHub's rules)."""
import os, re, subprocess, sys
root = sys.argv[1] if len(sys.argv) > 1 else '.'
os.chdir(root)
files = [f for f in subprocess.run(['git', 'ls-files', '*.md'], capture_output=True, text=True).stdout.split()
         if not f.startswith('vendor/')]
files += [f for f in subprocess.run(['git', 'ls-files', '--others', '--exclude-standard', '*.md'], capture_output=True, text=True).stdout.split()]
def anchors(path):
    out, seen, fence = set(), {}, False
    for line in open(path, encoding='utf-8'):
        if line.lstrip().startswith('```'):
            fence = not fence; continue
        m = None if fence else re.match(r'^#{1,6}\s+(.*?)\s*#*\s*$', line)
        if not m: continue
        t = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', m.group(1)).lower()
        t = re.sub(r'[^\w\- ]', '', t).replace(' ', '-')
        n = seen.get(t, 0); seen[t] = n + 1
        out.add(t if n == 0 else f'{t}-{n}')
    return out
bad = 0; count = 0
link = re.compile(r'\]\(([^)\s]+)\)')
for f in files:
    fence = False
    for i, line in enumerate(open(f, encoding='utf-8'), 1):
        if line.lstrip().startswith('```'):
            fence = not fence; continue
        if fence: continue
        for target in link.findall(line):
            if re.match(r'^[a-z]+:', target): continue
            path, _, anchor = target.partition('#')
            dest = os.path.normpath(os.path.join(os.path.dirname(f), path)) if path else f
            count += 1
            if not os.path.exists(dest):
                print(f'{f}:{i}: {target}: no such file {dest}'); bad += 1; continue
            if anchor and dest.endswith('.md') and anchor not in anchors(dest):
                print(f'{f}:{i}: {target}: no heading #{anchor} in {dest}'); bad += 1
print(f'{count} relative links checked, {bad} broken')
sys.exit(1 if bad else 0)
